"""A run directory's pieces agree with each other: the unreadable-file list, `latest`."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import class_folders, run_dir_of


def test_unreadable_files_are_found_however_the_root_is_named(isolated):
    """The scan is cached under the resolved root; a run given a relative --data and a resume or interpret
    given the absolute path (from config.json) must both get the bad file in their own path form."""
    from trainer.images import image_files, scan

    root = Path("pics")
    class_folders(root / "cat", ["a"], 2)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    for named in (root, root.resolve()):  # the second call is answered from the cache
        total, bad = scan(named)
        assert [path for path, _ in bad] == [named / "cat" / "empty.jpg"]
        assert bad[0][0] in set(image_files(named)) and total == 3


def test_latest_names_the_newest_run_with_a_model(trainer, fixtures, isolated):
    data = fixtures / "mnist_sample"
    fitted = run_dir_of(trainer("fit", "mnist_sample", "--data", data, "--no-pretrained", "--arch", "resnet18",
                                "--bs", "8", "--epochs", "1", "--no-interpret", "--quiet"))
    found = run_dir_of(trainer("lr-find", "mnist_sample", "--data", data, "--no-pretrained", "--arch", "resnet18",
                               "--bs", "8", "--num-it", "10", "--quiet"))
    assert found != fitted
    latest = fitted.parent / "latest"
    assert latest.resolve() == fitted.resolve() and os.readlink(latest) == fitted.name
    assert "accuracy" in trainer("interpret", latest).stdout  # the README's `trainer predict runs/<recipe>/latest`
