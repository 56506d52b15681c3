"""Training as a library call that publishes events: their order, what the files hold when each arrives, and the
Python API's options (the CLI's names and checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trainer as api
from helpers import SignalAt
from trainer.errors import BadInput, TrainingInterrupted
from trainer.runs import rundir

FAST = dict(pretrained=False, bs=8, arch="resnet18", progress=False)


class Watcher:
    """A subscriber that records each event with what the run directory held when it arrived."""

    def __init__(self):
        self.seen = []

    def __call__(self, event):
        run_dir = Path(event.data["run_dir"]) if "run_dir" in event.data else None
        if event.kind == "run_started":
            self.run_dir = run_dir
        rows = rundir.read_metrics_or_empty(self.run_dir)[1] if hasattr(self, "run_dir") else []
        last = hasattr(self, "run_dir") and (self.run_dir / rundir.LAST).is_file()
        self.seen.append((event, len(rows), last))

    def kinds(self):
        return [event.kind for event, _, _ in self.seen]


def test_fit_publishes_its_events_in_order(fixtures):
    watcher = Watcher()
    run = api.fit("mnist_sample", data=fixtures / "mnist_sample", epochs=2, on_event=watcher, **FAST)
    kinds = watcher.kinds()
    assert kinds[0] == "note" and kinds[-1] == "finished"
    assert "failed" not in kinds and "interrupted" not in kinds
    started = kinds.index("run_started")
    assert all(kind in ("note", "step") for kind in kinds[:started])  # nothing trains before the run directory exists
    # every epoch: its batches (3 training of 8 images, then 1 validation), then its row, then its checkpoint
    epochs = [i for i, kind in enumerate(kinds) if kind == "epoch"]
    assert len(epochs) == 2
    for n, at in enumerate(epochs, start=1):
        event, rows_on_disk, _ = watcher.seen[at]
        assert event.data["row"]["epoch"] == n and rows_on_disk == n  # metrics.csv has the row when it arrives
        checkpoint, _, last_on_disk = watcher.seen[at + 1]
        assert checkpoint.kind == "checkpoint" and checkpoint.data["epoch"] == n and last_on_disk
        batches = [e.data for e, _, _ in watcher.seen[(epochs[n - 2] + 2 if n > 1 else started + 1):at]
                   if e.kind == "batch"]
        assert [(b["phase"], b["batch"], b["batches"]) for b in batches] == \
            [("train", 1, 3), ("train", 2, 3), ("train", 3, 3), ("valid", 1, 1)]
        assert all(b["epoch"] == n for b in batches)
        assert all(b["loss"] > 0 for b in batches if b["phase"] == "train")
    # the events and the files agree
    header, rows = rundir.read_metrics(run.dir)
    assert [[e.data["row"][k] for k in header] for e, _, _ in watcher.seen if e.kind == "epoch"] == rows
    finished = watcher.seen[-1][0].data
    assert finished["run_dir"] == str(run.dir)
    assert json.loads((run.dir / rundir.SUMMARY).read_text()) == json.loads(json.dumps(finished["summary"]))
    assert run.summary["final"]["valid_loss"] == rows[-1][header.index("valid_loss")]
    assert [e.kind for e in run.events] == kinds  # the Run keeps them too


def test_a_signal_publishes_interrupted_and_the_run_resumes(fixtures, monkeypatch):
    import trainer.training.loop as loop

    watcher, signal_at = Watcher(), SignalAt(epoch=2, training=True, batch=2)
    plain = loop.early_stopping
    monkeypatch.setattr(loop, "early_stopping", lambda cfg, recipe, *done: [*plain(cfg, recipe, *done), signal_at])
    with pytest.raises(TrainingInterrupted) as stopped:
        api.fit("mnist_sample", data=fixtures / "mnist_sample", epochs=2, on_event=watcher, **FAST)
    monkeypatch.setattr(loop, "early_stopping", plain)
    kinds = watcher.kinds()
    assert kinds[-1] == "interrupted" and "finished" not in kinds and kinds.count("checkpoint") == 1
    assert watcher.seen[-1][0].data["message"] == str(stopped.value) and "--resume" in str(stopped.value)
    run = api.fit(resume=watcher.run_dir, progress=False)
    assert [row[0] for row in rundir.read_metrics(run.dir)[1]] == [1, 2]  # every epoch once
    assert run.events[0].kind == "note" and run.events[-1].kind == "finished"
    started = next(e for e in run.events if e.kind == "run_started")
    assert started.data["resumed_after"] == 1


@pytest.mark.parametrize("options, message", [
    (dict(epochs=0), "--epochs must be a whole number of at least 1, got 0"),
    (dict(seed=2**32), "--seed must be a whole number of at most 4294967295, got 4294967296"),
    (dict(opt="adma"), "unknown --opt 'adma' (did you mean 'adam'?)"),
    (dict(lr="fast"), "--lr must be a number (e.g. 1e-3), 'auto' or 'review', got 'fast'"),
    (dict(epoch=2), "unknown option 'epoch' (did you mean 'epochs'?)"),
    (dict(device="gpu"), "unknown --device 'gpu'"),
])
def test_the_api_refuses_what_the_cli_refuses(options, message, isolated):
    with pytest.raises(BadInput) as refused:
        api.fit("digits", progress=False, **options)
    assert message in str(refused.value)
    assert not (isolated / "runs").exists()


def test_load_predicts_and_interprets_like_the_cli(digits_run_copy, trainer):
    run_dir, _ = digits_run_copy
    data = Path(json.loads((run_dir / rundir.CONFIG).read_text())["data"]["path"])
    images = sorted((data / "testing" / "3").glob("*.png"))[:4]
    model = api.load(run_dir)
    assert model.predict(images, top_k=2) == json.loads(trainer("predict", run_dir, *images, "--json", "--top-k",
                                                                "2").stdout)
    report = model.interpret(top_k=4)
    per_class = json.loads((run_dir / "per_class.json").read_text())
    assert report["accuracy"] == pytest.approx(per_class["accuracy"]) and report["n"] == per_class["n"]
