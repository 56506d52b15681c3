"""The recipe registry: each declaration is the single source of its pipeline and its expectations."""

from __future__ import annotations

import pytest

from trainer.config import FitConfig
from trainer.recipes import RECIPES, Baseline, Recipe


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.check != "folder"])
def test_a_default_run_is_judged_against_a_baseline(name):
    """`trainer fit RECIPE` with nothing else set must be comparable to a declared baseline."""
    recipe = RECIPES[name]
    options = FitConfig(recipe=name, arch=None).resolve(recipe).to_dict()
    verdict = recipe.judge(options, {metric: 0.5 for metric in recipe.metrics})
    assert verdict["status"] in ("met", "missed"), verdict
    assert verdict["epochs"] == options["epochs"] and verdict["pretrained"] == options["pretrained"]


def test_other_settings_are_not_comparable_and_name_the_closest_baseline():
    recipe = RECIPES["cifar10"]
    options = {"epochs": 3, "pretrained": False, "arch": "resnet34"}
    verdict = recipe.judge(options, {"error_rate": 0.1})
    assert verdict["status"] == "not comparable" and verdict["actual"] == 0.1
    assert (verdict["epochs"], verdict["pretrained"]) == (1, False)  # from scratch is closer than pretrained
    assert recipe.judge({**options, "epochs": 1}, {"error_rate": 0.45})["status"] == "met"
    assert recipe.judge({**options, "epochs": 1}, {"error_rate": 0.55})["status"] == "missed"
    assert recipe.judge({**options, "epochs": 1, "arch": "resnet18"}, {"error_rate": 0.1})["status"] == "not comparable"


def test_baseline_direction_follows_the_metric():
    at_least = Baseline("accuracy", 0.9, 1, False, "test")
    at_most = Baseline("error_rate", 0.1, 1, False, "test")
    options = {"epochs": 1, "pretrained": False, "arch": "resnet34"}
    assert at_least.judge(options, {"accuracy": 0.91})["status"] == "met"
    assert at_least.judge(options, {"accuracy": 0.89})["status"] == "missed"
    assert at_most.judge(options, {"error_rate": 0.09})["status"] == "met"
    assert at_most.judge(options, {"error_rate": 0.11})["status"] == "missed"


@pytest.mark.parametrize("name", ["pets", "pets_breeds", "folder"])
def test_training_uses_the_transforms_inference_rebuilds(name, tmp_path, monkeypatch):
    """A recipe's `transforms` is the one declaration of its resize/augmentation: the DataLoaders training
    builds carry exactly those transforms (inference rebuilds them from the same declaration)."""
    import torch

    from trainer.data.loaders import build_dls

    recipe: Recipe = RECIPES[name]
    root = tmp_path / "data"
    from helpers import draw

    if recipe.check == "pets":
        for i, breed in enumerate(["Abyssinian", "Bengal", "beagle", "pug"]):
            for k in range(5):
                draw(root / "images" / f"{breed}_{k}.jpg", i, 4, size=(48, 64), mode="RGB", seed=10 * i + k)
    else:
        for i, label in enumerate(["cat", "dog"]):
            for k in range(5):
                draw(root / label / f"{k}.jpg", i, 2, size=(48, 64), mode="RGB", seed=10 * i + k)
    cfg = FitConfig(recipe=name, data=str(root), bs=2, workers=0, size=32).resolve(recipe)
    dls = build_dls(recipe, root, cfg, torch.device("cpu"))
    declared = recipe.transforms(cfg)
    item_names = [type(t).__name__ for t in dls.train.after_item.fs]
    for tfm in declared.get("item_tfms") and [declared["item_tfms"]] or []:
        assert type(tfm).__name__ in item_names and any(getattr(t, "size", None) == tfm.size
                                                          for t in dls.train.after_item.fs)
    batch_names = [type(t).__name__ for t in dls.train.after_batch.fs]
    for tfm in declared.get("batch_tfms") or []:
        assert type(tfm).__name__ in batch_names
