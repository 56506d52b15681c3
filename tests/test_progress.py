"""trainer.progress: a long step's bar on a terminal, one line per step elsewhere (CI, the service's logs), nothing
when quiet; and on stderr of real `trainer` commands, beside their own output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import class_folders
from rich.console import Console

import trainer
from trainer.progress import LINE, StepDisplay, counted_map, step


def display(terminal: bool, quiet: bool = False) -> tuple[StepDisplay, io.StringIO]:
    out = io.StringIO()
    return StepDisplay(Console(file=out, force_terminal=terminal, width=100), quiet=quiet), out


def test_one_line_per_step_when_not_a_terminal():
    shown, out = display(terminal=False)
    assert counted_map(lambda n: n * n, range(2000), 4, shown.publish, "scan", lambda r: "0 unreadable") == \
        [n * n for n in range(2000)]
    with step(shown.publish, "download", None, "bytes") as downloading:
        downloading.advance(2_500_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines)
    assert lines[0].startswith("scanned 2,000 images in ") and lines[0].endswith(" s (0 unreadable)")
    assert lines[1].startswith("downloaded 2.5 MB in ")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()  # no bar's control characters


def test_a_bar_on_a_terminal_then_the_line_and_nothing_when_quiet():
    shown, out = display(terminal=True)
    with step(shown.publish, "predict", 3) as predicting:
        predicting.last = 0.0  # as if a while passed: this update is shown
        predicting.advance(2)
        assert shown.bar is not None
        predicting.advance(1)
    assert shown.bar is None and "predicting" in out.getvalue() and "\x1b" in out.getvalue()
    assert "\x1b[2Kpredicted 3 images in " in out.getvalue().rstrip().splitlines()[-1]  # the bar erased, the line

    quiet, out = display(terminal=True, quiet=True)
    with step(quiet.publish, "scan", 3) as scanning:
        scanning.advance(3)
    assert out.getvalue() == "" and quiet.bar is None


def test_a_failed_step_takes_its_bar_down_and_prints_no_line():
    shown, out = display(terminal=False)
    with pytest.raises(ZeroDivisionError):
        counted_map(lambda n: 1 // (n - 500) and n, range(1000), 4, shown.publish, "decode")
    assert out.getvalue() == ""
    events = []
    with pytest.raises(KeyError):
        with step(lambda kind, **data: events.append(data["state"]), "scan", 5):
            raise KeyError("stop")
    assert events == ["started", "failed"]


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """A real `trainer` process, its stdout and stderr pipes (not terminals), as CI and the service run it."""
    env = {**os.environ, "PYTHONPATH": str(Path(trainer.__file__).parent.parent), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_fit_and_predict_print_progress_lines_on_stderr_when_not_a_terminal(tmp_path, trainer):
    data = tmp_path / "photos"
    class_folders(data, ["healthy", "rust"], 12, size=(40, 40), mode="RGB")
    (data / "rust" / "broken.png").write_bytes(b"not an image")
    fit = cli("fit", "folder", "--data", data, "--no-pretrained", "--arch", "resnet18", "--size", "32", "--bs", "8",
              "--epochs", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    lines = fit.stderr.splitlines()
    assert "scanned 25 images in " in fit.stderr and any(LINE.match(l) and "(1 unreadable)" in l for l in lines)
    assert any(LINE.match(l) and l.startswith("presized 24 images in ") for l in lines)  # 40 px photos, size 32
    assert any(LINE.match(l) and l.startswith("predicted ") for l in lines)  # the run's interpretation
    assert "\x1b" not in fit.stderr and "\r" not in fit.stderr  # no bar's control characters
    assert not any(LINE.match(l) for l in fit.stdout.splitlines())  # stdout keeps the run's own lines
    run_dir = Path(fit.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir()

    predicted = trainer("predict", run_dir, data / "rust", "--json")  # in-process: a pipe too, not a terminal
    lines = [l for l in predicted.stderr.splitlines() if LINE.match(l)]
    assert [l.split(" in ")[0] for l in lines] == ["scanned 13 images", "predicted 12 images"]
    assert lines[0].endswith("(1 unreadable)") and "\x1b" not in predicted.stderr
    import json

    assert len(json.loads(predicted.stdout)) == 13  # stdout is the JSON alone

    interpreted = trainer("interpret", run_dir)
    lines = [l.split(" in ")[0] for l in interpreted.stderr.splitlines() if LINE.match(l)]
    assert len(lines) == 1 and lines[0].startswith("predicted ")  # the data's scan is cached since the fit
    test = tmp_path / "test"
    class_folders(test, ["healthy", "rust"], 3, size=(40, 40), mode="RGB")  # images the run never saw
    evaluated = trainer("evaluate", run_dir, "--data", test, "--tta")
    lines = [l.split(" in ")[0] for l in evaluated.stderr.splitlines() if LINE.match(l)]
    assert lines == ["scanned 6 images", "predicted 30 images"]  # TTA: 5 passes over the 6
