"""lr-find, interpret and predict: their files, and that their numbers agree with the run's."""

from __future__ import annotations

import csv
import json
import math

import pytest
from helpers import no_runs_written, run_dir_of, without_progress
from PIL import Image


def decodes(path, min_side=200):
    with Image.open(path) as image:
        image.load()
        assert min(image.size) >= min_side, (path, image.size)
        return image.size


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_fit_ends_with_previews_and_interpretation(digits_run):
    run_dir, result = digits_run
    for name in ("batch.png", "results.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
                 "top_losses.png"):
        decodes(run_dir / name)
    assert len(read_csv(run_dir / "top_losses.csv")) == 1 + 9
    assert "most confused" in result.stdout


def test_interpret_agrees_with_the_run(trainer, digits_run_copy):
    run_dir, _ = digits_run_copy  # interpret rewrites the run's files (here with --top-k 5): a copy of its own
    result = trainer("interpret", "digits", "--out", run_dir.parent.parent, "--top-k", "5")
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)

    rows = read_csv(run_dir / "confusion_matrix.csv")
    assert rows[0][1:] == [str(d) for d in range(10)] and [r[0] for r in rows[1:]] == rows[0][1:]
    counts = [[int(v) for v in r[1:]] for r in rows[1:]]
    total = sum(map(sum, counts))
    assert total == 360  # the validation set
    with open(run_dir / "metrics.csv") as f:
        accuracy = float(list(csv.DictReader(f))[-1]["accuracy"])
    assert sum(counts[k][k] for k in range(10)) / total == pytest.approx(accuracy, abs=1e-6)

    top = read_csv(run_dir / "top_losses.csv")
    assert top[0] == ["path", "actual", "predicted", "loss", "p_actual", "p_predicted"] and len(top) == 1 + 5
    losses = [float(r[3]) for r in top[1:]]
    assert losses == sorted(losses, reverse=True)
    assert all(r[0].endswith(".png") and 0 <= float(r[4]) <= float(r[5]) <= 1 for r in top[1:])
    # the loss is the cross-entropy of the actual class: -log p(actual)
    assert all(float(r[3]) == pytest.approx(-math.log(float(r[4])), rel=1e-3, abs=1e-4) for r in top[1:])

    report = json.loads((run_dir / "per_class.json").read_text())
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert sum(c["support"] for c in report["classes"]) == 360
    confused = read_csv(run_dir / "most_confused.csv")
    assert confused[0] == ["actual", "predicted", "count"]
    assert sum(int(r[2]) for r in confused[1:]) == total - sum(counts[k][k] for k in range(10))
    width, height = decodes(run_dir / "confusion_matrix.png")
    assert width > 400 and height > 400
    decodes(run_dir / "confusion_matrix_normalized.png")
    decodes(run_dir / "top_losses.png")


def test_predict_returns_the_class(trainer, digits_run):
    run_dir, _ = digits_run
    import json as _json

    testing = json.loads((run_dir / "config.json").read_text())["data"]["path"] + "/testing"
    images = [f"{testing}/{d}" for d in range(10)]  # folders: every image in them
    result = trainer("predict", run_dir, *images, "--json", "--top-k", "3")
    predictions = _json.loads(result.stdout)
    assert len(predictions) == 360
    right = sum(p["path"].split("/")[-2] == p["predictions"][0]["label"] for p in predictions)
    assert right / len(predictions) >= 0.9
    assert all(len(p["predictions"]) == 3 and p["predictions"][0]["probability"] >= p["predictions"][1]["probability"]
               for p in predictions)
    # fastai's pickle, for those who trust the run, predicts the same
    pickled = _json.loads(trainer("predict", run_dir, f"{testing}/3", "--json", "--trust-pickle").stdout)
    safe = [p for p in predictions if p["path"].split("/")[-2] == "3"]
    assert [p["predictions"][0]["label"] for p in pickled] == [p["predictions"][0]["label"] for p in safe]
    one = f"{testing}/7/" + sorted(__import__("os").listdir(f"{testing}/7"))[0]
    table = trainer("predict", run_dir, one).stdout
    assert one.split("/")[-1] in table and "prediction" in table


def test_lr_find(trainer, fixtures, isolated):
    result = trainer("lr-find", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained",
                     "--arch", "resnet18", "--bs", "8", "--num-it", "30", "--start-lr", "1e-6", "--end-lr", "1")
    run_dir = run_dir_of(result)
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert set(found["suggestions"]) == {"minimum", "steep", "valley", "slide"}
    for name, lr in found["suggestions"].items():
        assert math.isfinite(lr) and 1e-6 <= lr <= 1, (name, lr)
        assert name in result.stdout
    assert len(found["lrs"]) == len(found["losses"]) > 10
    decodes(run_dir / "lr_find.png")


def test_fit_lr_auto_trains_with_valley(trainer, fixtures):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                     "resnet18", "--bs", "8", "--epochs", "1", "--lr", "auto", "--no-interpret")
    run_dir = run_dir_of(result)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["lr_find"]["chosen"] == "valley"
    assert config["options"]["lr"] == config["lr_find"]["suggestions"]["valley"]
    decodes(run_dir / "lr_find.png")
    assert not (run_dir / "confusion_matrix.png").exists()


def test_fit_lr_auto_refuses_when_lr_find_diverges_at_once(trainer, fixtures, isolated, monkeypatch):
    from trainer.training import lrfind, prepare

    real = lrfind.find_lr  # a real lr_find, started where the loss explodes within a few steps
    monkeypatch.setattr(prepare, "find_lr", lambda learn: real(learn, start_lr=1e3, end_lr=1e9))
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                     "resnet18", "--bs", "8", "--epochs", "1", "--lr", "auto", "--no-interpret", expect=2)
    assert "too early for a valley" in result.stderr and "pass --lr" in result.stderr
    assert "trainer lr-find mnist_sample" in result.stderr and "Traceback" not in result.stderr
    assert len(without_progress(result.stderr)) == 1
    assert no_runs_written(isolated) and not (isolated / "models").exists()  # lr_find's scratch copy is gone too


def test_interpret_without_a_run(trainer, isolated):
    result = trainer("interpret", "mnist", expect=2)
    assert "no trained run of 'mnist'" in result.stderr and "trainer fit mnist" in result.stderr
    partial = isolated / "runs" / "mnist" / "20260101-000000"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps({"recipe": {"name": "mnist"}}))
    result = trainer("interpret", partial, expect=2)
    assert "no trained model" in result.stderr and "trainer fit mnist" in result.stderr
    assert trainer("interpret", "mnist", "--top-k", "0", expect=2).stderr.count("--top-k") == 1
    missing = trainer("predict", isolated / "runs" / "nope", isolated, expect=2).stderr
    assert "no run '" in missing and not (isolated / "runs" / "nope").exists()


def test_per_class_table_by_hand():
    """Precision, recall and F1 worked out by hand, with a class never predicted and one never present."""
    import torch

    from trainer.inspection.interpret import Analysis

    actual, predicted = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 0]  # classes a, b, c, d: d never seen
    probs = torch.nn.functional.one_hot(torch.tensor(predicted), 4).float()
    analysis = Analysis(["a", "b", "c", "d"], [], probs, torch.tensor(actual), torch.zeros(6))
    assert analysis.per_class() == [
        {"class": "a", "precision": 0.5, "recall": 0.6667, "f1": 0.5714, "support": 3},  # 2 of 4 called a; 2 of 3 a
        {"class": "b", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},  # never predicted: 0, not 0/0
        {"class": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}]
