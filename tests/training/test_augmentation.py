"""Augmentation (--aug and its parameters), MixUp, label smoothing, and test-time augmentation (--tta).

Augmentation is declared by the recipe, recorded, and applied to training batches only: the validation batch
is the same tensor with or without it, and inference rebuilds the unaugmented pipeline from model.json. TTA is
fastai's Learner.tta on both inference paths (model.pkl and model.safetensors), with the same result.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import class_folders, one_line_error, run_dir_of, serving

from trainer.config import FitConfig
from trainer.recipes import get_recipe

TINY = ["--size", "32", "--arch", "test_resnet", "--no-pretrained", "--bs", "8"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two classes of 40x40 colour images in train/ and valid/, and a test/ folder the run never sees."""
    root = tmp_path_factory.mktemp("photos") / "leaves"
    class_folders(root / "train", ["healthy", "rust"], 12, size=(40, 40), mode="RGB")
    class_folders(root / "valid", ["healthy", "rust"], 4, size=(40, 40), mode="RGB")
    class_folders(root.parent / "test" / "leaves", ["healthy", "rust"], 3, size=(40, 40), mode="RGB")
    return root


def prepared(data: Path, **options):
    from trainer.training.events import Events
    from trainer.training.prepare import prepare

    return prepare(FitConfig(recipe="folder", data=str(data), size=32, arch="test_resnet", pretrained=False, bs=8,
                             cache=False, **options), Events())


def first_batches(p) -> tuple[torch.Tensor, torch.Tensor]:
    from fastai.torch_core import set_seed

    set_seed(0)
    train_x, _ = next(iter(p.data.dls.train))
    valid_x, _ = next(iter(p.data.dls.valid))
    return train_x.as_subclass(torch.Tensor).clone(), valid_x.as_subclass(torch.Tensor).clone()


def test_augmentation_changes_the_training_batch_and_never_the_validation_batch(photos):
    on, off = prepared(photos), prepared(photos, aug=False)
    assert on.cfg.aug is True and off.cfg.aug is False  # folder augments unless told not to
    train_on, valid_on = first_batches(on)
    train_off, valid_off = first_batches(off)
    assert train_on.shape == train_off.shape == valid_on.shape[:1] + train_on.shape[1:]
    assert list(on.data.dls.train.items) == list(off.data.dls.train.items)  # the same images, in the same order
    assert not torch.allclose(train_on, train_off, atol=1e-3)  # augmented
    # the validation batch: the same pixels with or without --aug (fastai's affine step still runs there, as an
    # identity resample: float rounding, under 1e-6 of the 0-1 range)
    assert torch.allclose(valid_on, valid_off, rtol=0, atol=1e-6)
    assert torch.equal(first_batches(on)[1], valid_on)  # and nothing random in it
    strong = prepared(photos, min_scale=0.3, max_rotate=45.0, flip_vert=True)
    assert strong.cfg.aug is True and strong.cfg.min_scale == 0.3  # a parameter alone turns --aug on
    train_strong, valid_strong = first_batches(strong)
    assert not torch.allclose(train_strong, train_on, atol=1e-3)
    assert torch.allclose(valid_strong, valid_on, rtol=0, atol=1e-6)


def test_seed_recipes_stay_as_the_course_wrote_them():
    from fastai.vision.all import Brightness, Flip, RandomResizedCropGPU, Resize

    for name in ("mnist", "mnist_sample", "cifar10", "pets", "digits"):
        cfg = FitConfig(recipe=name).augmentation(get_recipe(name))
        assert cfg["aug"] is False and "batch_tfms" not in get_recipe(name).pipeline(FitConfig(recipe=name, size=224))
    # pets_breeds: fastbook chapter 5's presizing, Resize(460) and aug_transforms(size=224, min_scale=0.75)
    recipe = get_recipe("pets_breeds")
    resolved = FitConfig(recipe="pets_breeds", **FitConfig(recipe="pets_breeds").augmentation(recipe), size=224)
    assert (resolved.min_scale, resolved.max_rotate, resolved.max_lighting, resolved.flip_vert) == (0.75, 10.0, 0.2, False)
    tfms = recipe.pipeline(resolved)
    assert isinstance(tfms["item_tfms"], Resize) and tfms["item_tfms"].size == (460, 460)
    kinds = [type(t) for t in tfms["batch_tfms"]]
    assert kinds == [Flip, Brightness, RandomResizedCropGPU]
    crop = tfms["batch_tfms"][-1]
    assert crop.size == (224, 224) and crop.min_scale == 0.75
    # --aug on a course recipe at its own size: flips, rotation, lighting, no crop
    mnist = FitConfig(recipe="mnist", aug=True).augmentation(get_recipe("mnist"))
    assert mnist["aug"] and mnist["min_scale"] is None and mnist["max_rotate"] == 10.0


@pytest.mark.parametrize("args, message", [
    (["--no-aug", "--max-rotate", "5"], "--no-aug and --max-rotate contradict each other"),
    (["--min-scale", "0"], "--min-scale must be above 0 and at most 1 (e.g. 0.75), got 0.0"),
    (["--max-lighting", "1"], "--max-lighting must be"),
    (["--label-smoothing", "1"], "--label-smoothing must be between 0 and 1"),
    (["--mixup", "0"], "--mixup must be a positive number"),
])
def test_bad_augmentation_is_one_line(trainer, photos, args, message):
    result = trainer("fit", "folder", "--data", photos, *TINY, *args, expect=2)
    assert message in one_line_error(result)
    assert not Path("runs").exists()


def test_min_scale_on_a_recipe_that_does_not_crop(trainer, fixtures):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--min-scale", "0.5", expect=2)
    assert "recipe 'mnist_sample' does not crop" in one_line_error(result)


def test_label_smoothing_and_mixup_change_the_loss(photos):
    from fastai.callback.core import Callback
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

    from trainer.training.loop import mixup

    class LossSpy(Callback):
        """The loss the optimiser steps on, beside plain cross-entropy of the same predictions and labels."""

        order = 60  # after MixUp, which mixes inputs and targets before the batch

        def before_fit(self):
            self.seen = []

        def after_loss(self):
            if self.training:
                plain = CrossEntropyLossFlat()(self.pred, *self.yb).item()
                self.seen.append((self.loss.item(), plain))

    plain = prepared(photos)
    assert isinstance(plain.learn.loss_func, CrossEntropyLossFlat) and not mixup(plain.cfg)
    smoothed = prepared(photos, label_smoothing=0.1)
    assert isinstance(smoothed.learn.loss_func, LabelSmoothingCrossEntropyFlat)
    assert smoothed.learn.loss_func.func.eps == 0.1
    x, y = smoothed.data.dls.one_batch()
    with torch.no_grad():
        logits = smoothed.learn.model(x)
    assert smoothed.learn.loss_func(logits, y).item() != pytest.approx(CrossEntropyLossFlat()(logits, y).item())

    mixed = prepared(photos, mixup=0.4)
    spy = LossSpy()
    with mixed.learn.added_cbs([*mixup(mixed.cfg), spy]):
        mixed.learn.fit(1)
    assert spy.seen and all(loss != pytest.approx(ce, abs=1e-6) for loss, ce in spy.seen)
    spy = LossSpy()
    with plain.learn.added_cbs([spy]):
        plain.learn.fit(1)
    assert all(loss == pytest.approx(ce, rel=1e-5) for loss, ce in spy.seen)


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory, photos):
    """One real `trainer fit folder` with augmentation (on by default), MixUp and label smoothing."""
    from helpers import Trainer, offline_data

    base = tmp_path_factory.mktemp("augmented")
    with offline_data(base):
        result = Trainer()("fit", "folder", "--data", photos, *TINY, "--epochs", "2", "--max-rotate", "20",
                           "--mixup", "0.4", "--label-smoothing", "0.1", "--out", base / "runs")
    return run_dir_of(result)


def probabilities(results: list[dict]) -> dict[str, float]:
    return {row["path"]: {p["label"]: p["probability"] for p in row["predictions"]} for row in results}


def test_the_run_records_its_augmentation(augmented_run):
    config = json.loads((augmented_run / "config.json").read_text())
    options = config["options"]
    assert (options["aug"], options["min_scale"], options["max_rotate"], options["mixup"],
            options["label_smoothing"]) == (True, 0.75, 20.0, 0.4, 0.1)
    meta = json.loads((augmented_run / "model.json").read_text())
    assert meta["pipeline"] == "presized"
    assert meta["augmentation"] == {"min_scale": 0.75, "flip_vert": False, "max_rotate": 20.0, "max_lighting": 0.2}


def test_tta_is_fastais_on_both_paths(trainer, augmented_run, photos):
    from fastai.learner import load_learner
    from fastai.torch_core import no_random

    from trainer.serving.inference import TTA_SEED, image_items

    images = photos / "valid"
    plain = probabilities(json.loads(trainer("predict", augmented_run, images, "--top-k", "2", "--json").stdout))
    safe = probabilities(json.loads(trainer("predict", augmented_run, images, "--top-k", "2", "--json",
                                            "--tta").stdout))
    pickled = probabilities(json.loads(trainer("predict", augmented_run, images, "--top-k", "2", "--json", "--tta",
                                               "--trust-pickle").stdout))
    learn = load_learner(augmented_run / "model.pkl")
    items = image_items([images])
    dl = learn.dls.test_dl(items, bs=64, num_workers=0)
    with no_random(TTA_SEED, reproducible=False):  # fastai's tta, its draws seeded as trainer seeds them
        fastai_probs, _ = learn.tta(dl=dl)
    vocab = [str(c) for c in learn.dls.vocab]
    assert len(safe) == len(items) == 8
    for item, row in zip(items, fastai_probs.tolist()):
        expected = dict(zip(vocab, row))
        for label, p in expected.items():
            assert safe[str(item)][label] == pytest.approx(p, abs=1e-5)
            assert pickled[str(item)][label] == pytest.approx(p, abs=1e-5)
    assert any(abs(safe[k][label] - plain[k][label]) > 1e-4 for k in safe for label in vocab)  # TTA is not a no-op
    again = probabilities(json.loads(trainer("predict", augmented_run, images, "--top-k", "2", "--json",
                                             "--tta").stdout))
    assert again == safe  # seeded: the same images, the same answer


def test_evaluate_and_interpret_say_they_used_tta(trainer, augmented_run, photos):
    result = trainer("evaluate", augmented_run, "--data", photos.parent / "test", "--tta")
    assert "(with TTA)" in result.stdout
    metrics = json.loads((augmented_run / "test_metrics.json").read_text())
    assert metrics["tta"] is True and metrics["n"] == 6
    report = (augmented_run / "report.html").read_text()
    assert "6 images (with test-time augmentation)" in report
    trainer("interpret", augmented_run, "--tta")
    assert json.loads((augmented_run / "per_class.json").read_text())["tta"] is True
    assert "Per-class report (with test-time augmentation)" in (augmented_run / "report.html").read_text()
    trainer("interpret", augmented_run)
    assert json.loads((augmented_run / "per_class.json").read_text())["tta"] is False
    assert "with test-time augmentation)</h2>" not in (augmented_run / "report.html").read_text()


@pytest.fixture(scope="module")
def server(augmented_run):
    yield from serving(augmented_run)


def test_the_server_answers_with_tta(server, trainer, augmented_run, photos):
    import httpx

    base, _ = server
    images = sorted((photos / "valid" / "rust").glob("*.png"))[:2]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    answer = httpx.post(f"{base}/predict", params={"tta": "true", "top_k": 2}, files=files, timeout=60).json()
    assert answer["tta"] is True
    expected = probabilities(json.loads(trainer("predict", augmented_run, *images, "--top-k", "2", "--json",
                                                "--tta").stdout))
    for path, row in zip(images, answer["results"]):
        got = {p["label"]: p["probability"] for p in row["predictions"]}
        assert got == pytest.approx(expected[str(path)], abs=1e-5)
    plain = httpx.post(f"{base}/predict", params={"top_k": 2}, files=files, timeout=60).json()
    assert plain["tta"] is False and plain["results"] != answer["results"]
