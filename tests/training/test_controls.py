"""Training controls (optimiser, weight decay, dropout, init, early stopping) and diagnostics
(evaluate on a test set, activation statistics)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_dir_of
from PIL import Image

FAST = ["--no-pretrained", "--bs", "8", "--arch", "resnet18", "--no-interpret"]


def test_optimiser_weight_decay_and_dropout_reach_the_learner(trainer, fixtures):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FAST, "--epochs", "1",
                     "--opt", "sgd", "--wd", "0.05", "--dropout", "0.2", "--init", "kaiming")
    run_dir = run_dir_of(result)
    options = json.loads((run_dir / "config.json").read_text())["options"]
    assert (options["opt"], options["wd"], options["dropout"], options["init"]) == ("sgd", 0.05, 0.2, "kaiming")
    from fastai.learner import load_learner
    from fastai.optimizer import SGD

    learn = load_learner(run_dir / "model.pkl")
    assert learn.opt_func is SGD and learn.wd == 0.05
    dropouts = [m.p for m in learn.model[-1].modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.1, 0.2]  # fastai halves ps for the head's first layer
    # trainer's own loader rebuilds the same head (its layout depends on the dropout) from model.json: it gives
    # the probabilities of fastai's learner from model.pkl
    images = sorted((fixtures / "mnist_sample" / "valid" / "7").iterdir())
    predictions = json.loads(trainer("predict", run_dir, *images, "--json", "--top-k", "2").stdout)
    assert [Path(p["path"]).name for p in predictions] == [image.name for image in images]
    for image, predicted in zip(images, predictions):
        label, _, probs = learn.predict(image)
        assert predicted["predictions"][0]["label"] == label
        assert {p["label"]: p["probability"] for p in predicted["predictions"]} == pytest.approx(
            {"3": float(probs[0]), "7": float(probs[1])}, abs=1e-4)


def test_defaults_resolve_to_fastais():
    from trainer.config import FitConfig
    from trainer.recipes import get_recipe

    recipe = get_recipe("mnist_sample")
    resolved = {opt: FitConfig("mnist_sample", opt=opt).resolve(recipe) for opt in ("adam", "sgd", "rmsprop", "lamb",
                                                                                   "ranger")}
    assert {opt: cfg.wd for opt, cfg in resolved.items()} == {"adam": 0.01, "sgd": 0.0, "rmsprop": 0.0, "lamb": 0.0,
                                                              "ranger": 0.01}
    default = FitConfig("mnist_sample").resolve(recipe)
    assert (default.opt, default.dropout, default.init, default.save_best) == ("adam", 0.5, "default", False)
    assert FitConfig("mnist_sample", early_stop=2).resolve(recipe).save_best is True


@pytest.mark.parametrize("scheme", ["kaiming", "xavier"])
def test_init_sets_the_expected_scale(scheme):
    import torchvision

    from trainer.model.learner import initialise

    model = torchvision.models.resnet18(num_classes=10)
    initialise(model, scheme)
    conv = model.layer2[0].conv1  # 64 -> 128 channels, 3x3
    fan_in, fan_out = 64 * 9, 128 * 9
    expected = np.sqrt(2 / fan_in) if scheme == "kaiming" else np.sqrt(2 / (fan_in + fan_out))
    assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.05)
    assert float(model.fc.bias.detach().abs().max()) == 0


@pytest.mark.parametrize("args, message", [
    (["--opt", "adamw"], "unknown --opt 'adamw'"),
    (["--wd", "-1"], "--wd must be 0 or a positive number"),
    (["--dropout", "1"], "--dropout must be at least 0 and below 1"),
    (["--init", "he"], "unknown --init 'he'"),
    (["--early-stop", "0"], "--early-stop must be a whole number of at least 1"),
])
def test_bad_controls_are_rejected(trainer, fixtures, isolated, args, message):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *args, expect=2)
    assert message in result.stderr and not (isolated / "runs").exists()


def test_early_stopping_keeps_the_best_epoch(trainer, isolated):
    # Both classes hold the same image: the error is stuck at 50%, so training should stop early.
    noise = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    for split, n in (("train", 16), ("valid", 4)):
        for name in ("left", "right"):
            (isolated / "flat" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(noise).save(isolated / "flat" / split / name / f"{i}.png")
    result = trainer("fit", "folder", "--data", isolated / "flat", "--size", "32", *FAST, "--epochs", "8",
                     "--early-stop", "1")
    run_dir = run_dir_of(result)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # patience 1: epoch 1 is the best, epoch 2 does not improve on it, and training stops there
    assert len(rows) == 2 and {float(r["error_rate"]) for r in rows} == {0.5}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["best"]["epoch"] == 1 == summary["final_epoch"]
    from safetensors.torch import load_file

    exported = load_file(str(run_dir / "model.safetensors"))
    best = torch.load(run_dir / "best.pth", weights_only=True)
    assert all(torch.equal(exported[k], best[k].cpu()) for k in best)


def test_evaluate_agrees_with_the_validation_and_with_fastai(trainer, digits_run_copy, tmp_path):
    """digits' testing/ folder is the run's validation set: images it never trained on, whose figures fit
    recorded with the trained learner. evaluate (trainer's loader, from model.json) must find the same."""
    run_dir, _ = digits_run_copy
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    trainer("evaluate", run_dir, "--data", data / "testing")
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        final = list(csv.DictReader(f))[-1]
    assert metrics["n"] == 360
    assert metrics["accuracy"] == pytest.approx(float(final["accuracy"]), abs=1e-6)
    assert metrics["loss"] == pytest.approx(float(final["valid_loss"]), abs=1e-4)
    with open(run_dir / "confusion_matrix.csv", newline="") as f:
        validation = list(csv.reader(f))
    with open(run_dir / "test_confusion_matrix.csv", newline="") as f:
        assert list(csv.reader(f)) == validation
    with Image.open(run_dir / "test_confusion_matrix.png") as image:
        image.load()
    assert "Test set" in (run_dir / "report.html").read_text()

    # A test set with only some of the classes, against fastai's own learner from model.pkl
    test = tmp_path / "held_out" / "test"
    for digit in ("1", "7", "8"):
        shutil.copytree(data / "testing" / digit, test / digit)
    trainer("evaluate", run_dir, "--data", tmp_path / "held_out")
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    from fastai.learner import load_learner

    learn = load_learner(run_dir / "model.pkl")
    files = sorted(test.rglob("*.png"))
    probs, targets, losses = learn.get_preds(dl=learn.dls.test_dl(files, with_labels=True), with_loss=True)
    assert [learn.dls.vocab[t] for t in targets.unique()] == ["1", "7", "8"]
    assert metrics["n"] == len(files)
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(dim=1) == targets).float().mean()), abs=1e-6)
    assert metrics["loss"] == pytest.approx(float(losses.mean()), abs=1e-4)

    (test / "banana").mkdir()
    shutil.copy(next((test / "1").iterdir()), test / "banana" / "x.png")
    assert "banana" in trainer("evaluate", run_dir, "--data", test, expect=2).stderr


def test_activation_stats(trainer, fixtures):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FAST, "--epochs", "1",
                     "--activation-stats")
    run_dir = run_dir_of(result)
    stats = json.loads((run_dir / "activations.json").read_text())
    layers = list(stats["layers"])
    # resnet18's stem conv and four stages, and the head's last linear layer
    assert [name.split(" ")[0] for name in layers] == ["body.0", "body.4", "body.5", "body.6", "body.7", "head.8"]
    assert stats["panels"] == ["mean", "std", "near_zero", *layers]  # one histogram panel per layer
    assert stats["batches"] == 3  # 24 training images, batches of 8
    assert all(v["std"] > 0 for v in stats["layers"].values())
    with Image.open(run_dir / "activations.png") as image:
        image.load()
        assert image.height > image.width / 2  # two rows of layer panels below the summary row
