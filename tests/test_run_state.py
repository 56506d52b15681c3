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


def make_run(out: Path, recipe: str, run_id: str, model: bool = True) -> Path:
    run_dir = out / recipe / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"recipe": {"name": "%s"}}' % recipe)
    if model:
        (run_dir / "model.safetensors").write_bytes(b"weights")
    return run_dir


def test_one_run_resolver(isolated):
    """A path, a run id, `latest` or a recipe name, for every command that takes a run."""
    import pytest

    from trainer.errors import BadInput
    from trainer.runs import resolve_run

    out = isolated / "runs"
    first = make_run(out, "digits", "20261101-000000")
    second = make_run(out, "digits", "20261101-000000-2")
    mnist = make_run(out, "mnist", "20261102-000000")
    lr_find = make_run(out, "mnist", "20261103-000000", model=False)
    make_run(out, "mnist", "20261101-000000")
    assert resolve_run("digits", out) == second  # the newest with a model
    assert resolve_run("mnist", out) == mnist and resolve_run("mnist", out, need_model=False) == lr_find
    assert resolve_run("latest", out) == mnist
    assert resolve_run("20261101-000000-2", out) == second
    assert resolve_run(str(first), out) == first
    with pytest.raises(BadInput, match="exists for several recipes"):
        resolve_run("20261101-000000", out)
    with pytest.raises(BadInput, match="holds no trained model"):
        resolve_run("20261103-000000", out)
    with pytest.raises(BadInput, match="no trained run of 'cifar10'"):
        resolve_run("cifar10", out)


def test_every_command_resolves_a_run_the_same_way(trainer, isolated):
    out = isolated / "runs"
    make_run(out, "digits", "20261101-000000")
    for command in (["interpret"], ["predict", "IMAGE"], ["evaluate", "--data", isolated], ["report"],
                    ["runs", "show"], ["fit", "--resume"]):
        args = [*command[:1], "nope", *command[1:]] if command[0] not in ("runs", "fit") else [*command, "nope"]
        result = trainer(*[a if a != "IMAGE" else isolated for a in args], expect=2)
        assert "no run 'nope' under" in result.stderr and "a run id, 'latest' or a recipe name" in result.stderr, \
            (command, result.stderr)
