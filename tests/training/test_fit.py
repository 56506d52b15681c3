"""`trainer fit` end to end on each recipe's layout, through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import CAT_BREEDS, CIFAR_CLASSES, DOG_BREEDS, run_dir_of
from PIL import Image

FAST = ["--no-pretrained", "--epochs", "1", "--bs", "8", "--arch", "resnet18"]


def check_run(run_dir, recipe, classes, epochs=1, rows=None):
    """What a user checks in a run directory a month later."""
    assert run_dir.parent.name == recipe and run_dir.is_dir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["classes"] == classes
    assert config["options"]["epochs"] == epochs and config["options"]["seed"] == 42
    assert config["environment"]["torch"] and config["environment"]["fastai"].startswith("2.8")
    with open(run_dir / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert len(metrics) == (rows or epochs)
    assert {"train_loss", "valid_loss", "error_rate", "seconds"} <= set(metrics[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["error_rate"] == pytest.approx(float(metrics[-1]["error_rate"]))
    check_throughput(config, metrics, summary)
    with Image.open(run_dir / "history.png") as image:
        image.load()
        assert image.width > 400 and image.height > 200
    from fastai.learner import load_learner

    learn = load_learner(run_dir / "model.pkl")  # fastai users' way in
    assert [str(c) for c in learn.dls.vocab] == classes
    assert json.loads((run_dir / "model.json").read_text())["classes"] == classes  # trainer's, without pickle
    assert (run_dir / "model.safetensors").stat().st_size > 1_000_000
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"
    return config, metrics, learn


def check_throughput(config, metrics, summary):
    """train_images_per_second is the training images seen (every epoch's full batches: fastai drops the last,
    partial one) over the seconds spent training, which are part of the epochs' own seconds."""
    bs = config["options"]["bs"]
    images = len(metrics) * (config["data"]["n_train"] // bs * bs)  # each row is one trained epoch
    seconds = summary["train_seconds"]  # rounded to 0.01 s, and the figure to 0.1 image/s: the bounds allow both
    assert images / (seconds + 0.005) - 0.05 <= summary["train_images_per_second"] <= images / (seconds - 0.005) + 0.05
    assert seconds <= sum(float(row["seconds"]) for row in metrics) + 0.01 * len(metrics)


def test_mnist_sample_from_fastai_home(trainer, fixtures, isolated):
    # A folder already in FASTAI_HOME/data is used as is, without the network.
    (isolated / "fastai_home" / "data").mkdir(parents=True)
    (isolated / "fastai_home" / "data" / "mnist_sample").symlink_to(fixtures / "mnist_sample")
    result = trainer("fit", "mnist_sample", *FAST)
    run_dir = run_dir_of(result)
    config, _, learn = check_run(run_dir, "mnist_sample", ["3", "7"])
    assert config["schedule"] == "fit_one_cycle"
    assert config["data"]["n_train"] == 24 and config["data"]["n_valid"] == 8
    # fastai's learner from model.pkl and trainer's own loader (model.json + safetensors) give one answer
    images = sorted((fixtures / "mnist_sample" / "valid").rglob("*.png"))
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(images))
    safe = json.loads(trainer("predict", run_dir, *images, "--json", "--top-k", "2").stdout)
    assert [Path(row["path"]).name for row in safe] == [image.name for image in images]
    for row, p in zip(safe, probs.tolist()):
        assert row["predictions"][0]["label"] == ("3" if p[0] > p[1] else "7")
        assert {q["label"]: q["probability"] for q in row["predictions"]} == pytest.approx({"3": p[0], "7": p[1]},
                                                                                         abs=1e-4)
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_mnist_from_archive(trainer, fixtures, isolated):
    archive = isolated / "mnist_png.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fixtures / "mnist_png", arcname="mnist_png")
    run_dir = run_dir_of(trainer("fit", "mnist", "--data", archive, *FAST))
    check_run(run_dir, "mnist", [str(d) for d in range(10)])
    # the second run reuses the extracted copy
    run_dir_of(trainer("fit", "mnist", "--data", archive, *FAST, "--quiet"))
    assert len(list((isolated / "datasets" / ".extracted").iterdir())) == 1


def test_cifar10_official_and_random_split(trainer, fixtures):
    run_dir = run_dir_of(trainer("fit", "cifar10", "--data", fixtures / "cifar10", *FAST))
    config, _, _ = check_run(run_dir, "cifar10", CIFAR_CLASSES)
    assert config["data"]["n_valid"] == 10  # the official test/ folder
    run_dir = run_dir_of(trainer("fit", "cifar10", "--data", fixtures / "cifar10", "--valid-pct", "0.25", *FAST))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["n_train"] + config["data"]["n_valid"] == 30 and config["data"]["n_valid"] == 7


def test_pets_cat_or_dog(trainer, fixtures, tmp_path):
    run_dir = run_dir_of(trainer("fit", "pets", "--data", fixtures / "oxford-iiit-pet", "--size", "32", *FAST))
    config, _, learn = check_run(run_dir, "pets", ["False", "True"])
    assert config["options"]["size"] == 32 and config["options"]["valid_pct"] == 0.2
    assert config["data"]["n_valid"] == 4  # 20% of 24, seed 42
    images = fixtures / "oxford-iiit-pet" / "images"
    # fastai's learner answers in the course's vocab (True is a cat); trainer shows the same answer as cat/dog.
    # The dataset's own file: after the fit, this process reads it, not the fit's presized copy of it.
    photo = images / "Bengal_1.jpg"
    label, index, probs = learn.predict(photo)
    elsewhere = Path(shutil.copy(photo, tmp_path / "photo.jpg"))  # the same bytes, outside the dataset
    assert torch.allclose(learn.predict(elsewhere)[2], probs, atol=1e-6)
    shown = {"True": "cat", "False": "dog"}[str(label)]
    [safe] = json.loads(trainer("predict", run_dir, photo, "--json").stdout)
    assert safe["predictions"][0]["label"] == shown
    assert safe["predictions"][0]["probability"] == pytest.approx(float(probs[index]), abs=1e-4)

    # people read cat/dog everywhere, while the model's vocab stays the course's True/False
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["classes"] == ["False", "True"] and meta["display_names"] == ["dog", "cat"]
    trainer("interpret", run_dir)  # again from model.json, as a later session would
    for _ in range(2):
        with open(run_dir / "confusion_matrix.csv") as f:
            header, *rows = list(csv.reader(f))
        assert header[1:] == ["dog", "cat"] and [r[0] for r in rows] == ["dog", "cat"]
        with open(run_dir / "per_class.csv") as f:
            assert [r["class"] for r in csv.DictReader(f)] == ["dog", "cat"]
        with open(run_dir / "top_losses.csv") as f:
            top = list(csv.DictReader(f))
        assert len(top) == 4 and all({r["actual"], r["predicted"]} <= {"cat", "dog"} for r in top)
        # the course's labelling: a capitalised file name is a cat (Bengal_1.jpg), a lower-case one a dog
        assert [r["actual"] for r in top] == ["cat" if Path(r["path"]).name[0].isupper() else "dog" for r in top]
        assert all(0 <= float(r["p_actual"]) <= 1 and 0 <= float(r["p_predicted"]) <= 1 for r in top)
        assert all((r["actual"] == r["predicted"]) == (r["p_actual"] == r["p_predicted"]) for r in top)
    predicted = json.loads(trainer("predict", run_dir, images, "--json", "--top-k", "2").stdout)
    assert {p["label"] for row in predicted for p in row["predictions"]} == {"cat", "dog"}
    table = trainer("predict", run_dir, images / "Bengal_1.jpg", "--trust-pickle").stdout
    assert shown in table and "True" not in table and "False" not in table
    # a run from before display names shows its vocab
    del meta["display_names"]
    (run_dir / "model.json").write_text(json.dumps(meta))
    predicted = json.loads(trainer("predict", run_dir, images / "pug_1.jpg", "--json", "--top-k", "2").stdout)
    assert {p["label"] for p in predicted[0]["predictions"]} == {"True", "False"}


def test_pets_breeds(trainer, fixtures):
    run_dir = run_dir_of(trainer("fit", "pets_breeds", "--data", fixtures / "oxford-iiit-pet", "--size", "32", *FAST))
    check_run(run_dir, "pets_breeds", sorted(CAT_BREEDS + DOG_BREEDS))
    # Without pickle, model.json rebuilds the same presize + validation-crop pipeline: same probabilities.
    images = fixtures / "oxford-iiit-pet" / "images"
    safe = json.loads(trainer("predict", run_dir, images, "--json", "--top-k", "4").stdout)
    pickled = json.loads(trainer("predict", run_dir, images, "--json", "--top-k", "4", "--trust-pickle").stdout)
    for a, b in zip(safe, pickled):
        assert a["path"] == b["path"]
        assert {p["label"]: p["probability"] for p in a["predictions"]} == pytest.approx(
            {p["label"]: p["probability"] for p in b["predictions"]}, abs=1e-4)


@pytest.mark.parametrize("split", ["folders", "random"])
def test_own_folder(trainer, fixtures, isolated, split):
    data = fixtures / "own"
    if split == "folders":  # train/ and valid/ subfolders
        data = isolated / "split"
        for name in ("healthy", "rust"):
            for i, image in enumerate(sorted((fixtures / "own" / name).iterdir())):
                target = data / ("valid" if i < 2 else "train") / name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(image.read_bytes())
    run_dir = run_dir_of(trainer("fit", "folder", "--data", data, "--size", "32", *FAST))
    config, _, _ = check_run(run_dir, "folder", ["healthy", "rust"])
    assert config["data"]["n_valid"] == (4 if split == "folders" else 3)


def test_fine_tune_from_local_weights(trainer, fixtures, isolated):
    # --weights stands in for the download on an air-gapped machine: fastai's pretrained path
    # (frozen body, ImageNet normalisation, fine_tune) without any network.
    import torch
    import torchvision

    weights = isolated / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--arch", "resnet18",
                     "--weights", weights, "--epochs", "1", "--bs", "8")
    config, metrics, learn = check_run(run_dir_of(result), "mnist_sample", ["3", "7"], rows=2)
    assert config["schedule"] == "fine_tune" and config["options"]["pretrained"] is True
    assert [row["phase"] for row in metrics] == ["frozen", "train"]
    assert "Normalize" in str(learn.dls.after_batch)
    run_dir = run_dir_of(result)
    assert json.loads((run_dir / "model.json").read_text())["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    images = fixtures / "mnist_sample" / "valid" / "7"
    safe = json.loads(trainer("predict", run_dir, images, "--json", "--top-k", "2").stdout)
    pickled = json.loads(trainer("predict", run_dir, images, "--json", "--top-k", "2", "--trust-pickle").stdout)
    assert [p["predictions"][0]["probability"] for p in safe] == pytest.approx(
        [p["predictions"][0]["probability"] for p in pickled], abs=1e-4)


def test_digits_learns(digits_run):
    """The README's first command, offline: scikit-learn's digits reach 90% accuracy."""
    run_dir, result = digits_run
    config, metrics, _ = check_run(run_dir, "digits", [str(d) for d in range(10)], epochs=3)
    assert config["options"]["arch"] == "resnet34" and config["options"]["pretrained"] is False
    assert config["data"]["n_train"] == 1437 and config["data"]["n_valid"] == 360
    assert float(metrics[-1]["accuracy"]) >= 0.90
    assert (Path(config["data"]["path"]) / "testing" / "0").is_dir()
    assert "accuracy" in result.stdout and str(run_dir) == result.stdout.strip().splitlines()[-1]
