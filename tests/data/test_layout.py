"""Layout checks that name the problem instead of reaching fastai: a validation class the training set lacks,
a class folder whose name cannot be a class."""

from __future__ import annotations

import shutil

import pytest
from helpers import class_folders, one_line_error, run_dir_of

FIT = ("--no-pretrained", "--epochs", "1", "--bs", "4", "--arch", "resnet18")


@pytest.mark.parametrize("recipe", ["mnist_sample", "folder"])
def test_a_validation_class_the_training_set_lacks(trainer, isolated, recipe):
    root = isolated / "data"
    class_folders(root / "train", ["3", "7"], 6)
    class_folders(root / "valid", ["3", "7", "z"], 2)
    message = one_line_error(trainer("fit", recipe, "--data", root, *FIT, expect=2))
    assert "class 'z' is in 'valid/' but not in 'train/'" in message and str(root / "valid" / "z") in message
    assert not (isolated / "runs").exists()


@pytest.mark.parametrize("name", ["...", "  ", ". ."])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_class_folder_that_cannot_be_a_class_name_is_named(trainer, isolated, name, split):
    root = isolated / "data"
    class_folders(root / "train", ["3", "7"], 6)
    class_folders(root / "valid", ["3", "7"], 2)
    class_folders(root / split, [name], 2)
    message = one_line_error(trainer("fit", "mnist_sample", "--data", root, *FIT, expect=2))
    assert f"class folder '{name}'" in message and "cannot be a class name" in message


def test_evaluate_refuses_a_copy_of_the_training_images(trainer, fixtures, isolated):
    data = isolated / "mnist_sample"
    shutil.copytree(fixtures / "mnist_sample", data)
    run_dir = run_dir_of(trainer("fit", "mnist_sample", "--data", data, *FIT, "--no-interpret", "--quiet"))
    copy = isolated / "elsewhere" / "test"
    shutil.copytree(data / "train", copy)  # the same bytes, at other paths and names
    for image in copy.rglob("*.png"):
        image.rename(image.with_name(f"copy-{image.name}"))
    message = one_line_error(trainer("evaluate", run_dir, "--data", copy.parent, expect=2))
    assert "24 of its 24 images trained this run" in message
    assert not (run_dir / "test_metrics.json").exists()
