"""A signal at any phase of a fit ends with one line that says what is on disk, in a real process.

Each signal is delivered deterministically: SignalAt at an exact batch, or a step of the pipeline patched to
send it to its own process when the step is reached. The process may die (SIGTERM's default): a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers import Process

import trainer

RUNNER = """
import os, signal, sys
how, sys.argv = sys.argv[1], ["trainer", *sys.argv[2:]]
kind, *rest = how.split(":")
if kind == "batch":  # batch:EPOCH:TRAINING:BATCH, SIGINT from the training loop's callbacks
    import helpers, trainer.training.loop as loop
    at, plain = helpers.SignalAt(int(rest[0]), rest[1] == "1", int(rest[2])), loop.early_stopping
    loop.early_stopping = lambda cfg, recipe, *done: [*plain(cfg, recipe, *done), at]
else:  # step:MODULE:NAME:SIGNAL:before|after, the signal when the step is reached or returns
    import importlib
    module, name, signum, when = rest[0], rest[1], signal.Signals[rest[2]], rest[3]
    owner, once = importlib.import_module(module), []
    plain = getattr(owner, name)
    def step(*args, **kwargs):
        if when == "before" and not once:
            once.append(os.kill(os.getpid(), signum))
        result = plain(*args, **kwargs)
        if when == "after" and not once:
            once.append(os.kill(os.getpid(), signum))
        return result
    setattr(owner, name, step)
from trainer.cli import app
app()
"""


def stopped_fit(fixtures, out: Path, how: str, *extra) -> tuple[int, str]:
    """`trainer fit mnist_sample` (2 epochs from scratch) with the signal `how` says; (exit code, stderr)."""
    tests = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(trainer.__file__).parent.parent), str(tests)])}
    args = extra or ("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                     "resnet18", "--bs", "8", "--epochs", "2", "--no-interpret", "--out", out)
    proc = Process([sys.executable, "-c", RUNNER, how, *args], merge_stderr=False, env=env)
    try:
        _, stderr = proc.finish()
    finally:
        proc.stop()
    assert "Traceback" not in stderr, stderr
    return proc.popen.returncode, stderr.strip().splitlines()[-1]


def runs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("mnist_sample/*") if p.name != "latest")


@pytest.mark.parametrize("how, code", [
    ("step:trainer.training.fit:save_batch:SIGTERM:before", 143),  # the run directory exists, no epoch yet
    ("batch:1:1:1", 130),  # Ctrl-C during epoch 1
])
def test_before_the_first_checkpoint_nothing_is_kept(fixtures, isolated, how, code):
    out = isolated / "runs"
    exit_code, line = stopped_fit(fixtures, out, how)
    assert exit_code == code, line
    assert line.startswith(f"interrupted: stopped by {signal.Signals(code - 128).name} before the first epoch's "
                           f"checkpoint; nothing was kept (")
    assert "was removed): run `trainer fit` again" in line and "--resume" not in line
    assert runs(out) == []  # no config.json and split.csv without a run


@pytest.mark.parametrize("how, signame", [
    ("batch:2:1:1", "SIGINT"),  # Ctrl-C during epoch 2
    ("step:trainer.training.checkpoint:save_state:SIGTERM:after", "SIGTERM"),  # just after epoch 1's checkpoint
])
def test_after_a_checkpoint_it_names_the_epoch_and_resume_finishes(trainer, fixtures, isolated, how, signame):
    out = isolated / "runs"
    exit_code, line = stopped_fit(fixtures, out, how)
    (run_dir,) = runs(out)
    assert exit_code == (130 if signame == "SIGINT" else 143), line
    assert line == (f"interrupted: stopped by {signame} after epoch 1 of 2: the checkpoint of epoch 1 of 2 is saved, "
                    f"the model is not exported: continue with `trainer fit --resume {run_dir}`")
    assert json.loads((run_dir / "checkpoint.json").read_text())["epochs_done"] == 1
    assert not (run_dir / "model.safetensors").exists()
    trainer("fit", "--resume", run_dir)
    with open(run_dir / "metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    assert (run_dir / "summary.json").is_file()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_after_the_last_epoch_it_says_the_model_is_exported(trainer, fixtures, isolated, signame):
    out = isolated / "runs"
    exit_code, line = stopped_fit(fixtures, out, f"step:trainer.training.fit:write_plots:{signame}:before")
    (run_dir,) = runs(out)
    assert exit_code == (130 if signame == "SIGINT" else 143), line
    assert line == (f"interrupted: stopped by {signame} after training ended: the checkpoint of epoch 2 of 2 is saved "
                    f"and the model is exported (model.safetensors); the plots and summary are not written: finish "
                    f"them with `trainer fit --resume {run_dir}`")
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "last.pth").is_file()
    assert not (run_dir / "summary.json").exists()
    trainer("fit", "--resume", run_dir)  # where it says it does: the plots and summary, no epoch again
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and (run_dir / "history.png").is_file()


@pytest.mark.parametrize("how, extra", [
    ("step:trainer.training.prepare:load:SIGTERM:before", ()),  # preparing the data
    ("step:trainer.training.prepare:find_lr:SIGINT:before", ("--lr", "auto")),  # --lr auto's lr_find
])
def test_while_preparing_nothing_was_saved(fixtures, isolated, how, extra):
    out = isolated / "runs"
    args = ("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch", "resnet18",
            "--bs", "8", "--epochs", "1", "--out", out, *extra)
    exit_code, line = stopped_fit(fixtures, out, how, *args)
    name = how.split(":")[3]
    assert exit_code == 128 + signal.Signals[name], line
    assert line == f"interrupted: stopped by {name} before a run directory was created; nothing was saved"
    assert runs(out) == []


def test_lr_find_stopped_keeps_nothing(fixtures, isolated):
    out = isolated / "runs"
    args = ("lr-find", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch", "resnet18",
            "--bs", "8", "--out", out)
    exit_code, line = stopped_fit(fixtures, out, "step:trainer.training.fit:find_lr:SIGTERM:before", *args)
    assert exit_code == 143, line
    assert line.startswith("interrupted: stopped by SIGTERM before lr_find finished; nothing was kept (")
    assert runs(out) == []
