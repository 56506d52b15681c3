"""Nothing lost: a signal stops training cleanly after a checkpoint, and --resume finishes the run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Process, run_dir_of


def start_training(fixtures, out: Path, epochs: int = 12, extra=()) -> Process:
    return Process([sys.executable, "-m", "trainer", "fit", "mnist_sample", "--data", fixtures / "mnist_sample",
                    "--no-pretrained", "--arch", "resnet18", "--bs", "2", "--epochs", epochs, "--no-interpret",
                    "--out", out, *extra], merge_stderr=False)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_after_a_checkpoint_and_resume_finishes(trainer, fixtures, isolated, signum, code):
    out = isolated / "runs"
    proc = start_training(fixtures, out)
    try:
        proc.wait_for("epoch 2/12")  # printed as epoch 2 ends, just before its checkpoint is saved
        proc.popen.send_signal(signum)
        stdout, stderr = proc.finish()
    finally:
        proc.stop()
    assert proc.popen.returncode == code, stderr
    (run_dir,) = out.glob("mnist_sample/2*")
    assert f"interrupted: stopped by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr
    assert f"trainer fit --resume {run_dir}" in stderr
    assert not (run_dir / "summary.json").exists() and (run_dir / "last.pth").is_file()
    done = json.loads((run_dir / "checkpoint.json").read_text())["epochs_done"]
    # Nothing lost: the epoch seen when the signal was sent, and every epoch reported after it, were saved.
    # (How many more epochs ran before the signal landed depends on the machine's speed: not asserted.)
    reported = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert done >= 2 and len(reported) == done, (done, reported)

    if signum == signal.SIGINT:
        return  # one resume is enough
    result = trainer("fit", "--resume", run_dir, "--no-interpret", "--device", "cpu")
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))  # continuous, as an uninterrupted run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 12 and summary["resumed_after_epoch"] == done
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resumed"][0]["after_epoch"] == done and config["options"]["epochs"] == 12
    assert config["resumed"][0]["device"] == "cpu" and config["asked"]["device"] == "auto"
    assert (run_dir / "best.pth").is_file() and not (run_dir / "last.pth").exists()
    assert "resuming" in result.stdout


def test_resume_refuses_finished_or_checkpointless_runs(trainer, fixtures, isolated):
    run_dir = Path(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                           "resnet18", "--bs", "8", "--epochs", "1", "--no-interpret").stdout.strip().splitlines()[-1])
    result = trainer("fit", "--resume", run_dir, expect=2)
    assert "already finished" in result.stderr
    assert "drop epochs" in trainer("fit", "--resume", run_dir, "--epochs", "3", expect=2).stderr
    (run_dir / "summary.json").unlink()
    (run_dir / "last.pth").write_bytes(b"")  # a checkpoint cut short (it is written to a temporary name first)
    # --device with --resume is honoured (here: refused, as there is no GPU), never silently ignored
    assert "no CUDA GPU" in trainer("fit", "--resume", run_dir, "--device", "cuda", expect=2).stderr
    assert "has no checkpoint" in trainer("fit", "--resume", run_dir, expect=2).stderr
    (run_dir / "last.pth").unlink()
    assert "has no checkpoint" in trainer("fit", "--resume", run_dir, expect=2).stderr


# Every write of an epoch's save path, in order: the metrics row, the checkpoint, its mirror, the best weights;
# each killed after its temporary file is whole (not yet renamed) and just after the rename. The second epoch is
# the last: killed after its checkpoint, the resumed run has no epoch left to train, only the model to export.
KILL_POINTS = [f"{name}:{stage}:{n}" for name, n in (("metrics.csv", 2), ("last.pth", 2), ("checkpoint.json", 2),
                                                    ("best.pth", 1)) for stage in ("written", "renamed")]


def test_a_kill_anywhere_in_the_save_path_resumes_to_the_uninterrupted_result(trainer, fixtures, isolated):
    """SIGKILL at each point of the save path (a test hook in runs.atomic_path, not a timer): --resume then
    ends with every epoch's metrics row once and the same losses as a run that was never killed (the same
    shuffles, augmentations and optimizer state). With --early-stop (patience longer than the run): fastai's
    tracker must not judge the epochs the resumed schedule skips."""
    import os

    uninterrupted = run_dir_of(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained",
                                       "--arch", "resnet18", "--bs", "8", "--epochs", "2", "--no-interpret",
                                       "--early-stop", "5", "--out", isolated / "whole", "--quiet"))
    with open(uninterrupted / "metrics.csv") as f:
        expected = list(csv.DictReader(f))
    for point in KILL_POINTS:
        out = isolated / point.replace(":", "-")
        command = [sys.executable, "-m", "trainer", "fit", "mnist_sample", "--data", str(fixtures / "mnist_sample"),
                   "--no-pretrained", "--arch", "resnet18", "--bs", "8", "--epochs", "2", "--no-interpret",
                   "--early-stop", "5", "--out", str(out), "--quiet"]
        killed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TRAINER_TEST_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        (run_dir,) = out.glob("mnist_sample/2*")
        trainer("fit", "--resume", run_dir, "--no-interpret", "--quiet")
        with open(run_dir / "metrics.csv") as f:
            resumed = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in resumed] == [1, 2], point  # every epoch exactly once
        for got, want in zip(resumed, expected):
            for column in ("train_loss", "valid_loss", "error_rate"):
                assert abs(float(got[column]) - float(want[column])) < 1e-4, (point, column, got, want)
        assert not list(run_dir.glob(".*.tmp")), point  # the cut-short write's temporary file is gone
        assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2
