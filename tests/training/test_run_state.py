"""A run directory's pieces agree with each other: the unreadable-file list, `latest`."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import class_folders, run_dir_of, without_progress


def test_unreadable_files_are_found_however_the_root_is_named(isolated):
    """The scan is cached under the resolved root; a run given a relative --data and a resume or interpret
    given the absolute path (from config.json) must both get the bad file in their own path form."""
    from trainer.data.images import image_files, scan

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
    from trainer.runs.store import resolve_run

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


def test_unreadable_images_after_the_fit(trainer, isolated):
    """A new user's session: a relative --data with an empty, a text and a truncated .jpg; fit skips them, and
    interpret, predict and evaluate skip them too (one warning line), never a PIL traceback."""
    pics = Path("pics")
    for s, (split, n) in enumerate((("train", 6), ("valid", 3))):
        for k, name in enumerate(["cat", "dog"]):
            for i in range(n):
                from helpers import draw

                # a seed of its own per split: the same seed would draw validation images identical to training
                # ones, which evaluate rightly refuses as images the run trained on
                draw(pics / split / name / f"{i}.jpg", k, 2, size=(32, 32), mode="RGB", seed=100 * s + 10 * k + i)
    bad_dir = pics / "valid" / "dog"
    (bad_dir / "empty.jpg").write_bytes(b"")
    (bad_dir / "notes.jpg").write_text("not an image")
    whole = (bad_dir / "0.jpg").read_bytes()
    (bad_dir / "cut.jpg").write_bytes(whole[: len(whole) // 2])

    fitted = trainer("fit", "folder", "--data", "pics", "--no-pretrained", "--arch", "resnet18", "--size", "32",
                     "--bs", "4", "--epochs", "1", "--no-interpret", "--quiet")
    assert "skipping 3 unreadable of 21 images" in fitted.stderr
    run_dir = run_dir_of(fitted)

    interpreted = trainer("interpret", "folder")
    assert "skipping 3 unreadable" in interpreted.stderr and "on 6 validation images" in interpreted.stdout

    import json

    rows = json.loads(trainer("predict", "folder", bad_dir, "--json").stdout)
    unreadable = {Path(r["path"]).name for r in rows if "unreadable" in r}
    assert unreadable == {"empty.jpg", "notes.jpg", "cut.jpg"} and len(rows) == 6
    assert all(r["predictions"] for r in rows if "unreadable" not in r)
    table = trainer("predict", run_dir, bad_dir / "cut.jpg", bad_dir / "1.jpg")
    assert "unreadable" in table.stdout and "skipping 1 unreadable of 2" in table.stderr

    alone = trainer("predict", run_dir, Path("/etc/hostname"), expect=2)
    assert "none of the 1 images" in alone.stderr and "Traceback" not in alone.stderr + alone.stdout

    evaluated = trainer("evaluate", run_dir, "--data", pics / "valid")
    assert "skipping 3 unreadable" in evaluated.stderr
    assert json.loads((run_dir / "test_metrics.json").read_text())["n"] == 6


def test_a_random_split_does_not_depend_on_the_order_files_are_listed_in(isolated, monkeypatch):
    """fastai lists files in os.walk order, which differs between copies of a dataset (another disk, another
    filesystem): listed in reverse, a --valid-pct split must still put the same files in the same split."""
    from trainer.config import FitConfig
    from trainer.data.loaders import build_dls
    from trainer.recipes import get_recipe
    import torch

    from trainer.runs.split import split_rows

    root = isolated / "pics"
    class_folders(root, ["cat", "dog"], 10, size=(16, 16))
    recipe = get_recipe("folder")
    cfg = FitConfig(recipe="folder", data=str(root), arch="resnet18", pretrained=False, bs=4, workers=0, size=16,
                    valid_pct=0.3).resolve(recipe)
    listed = split_rows(build_dls(recipe, root, cfg, torch.device("cpu")), root)
    walk = os.walk

    def reversed_walk(*args, **kwargs):  # what another filesystem may return
        for folder, dirs, files in walk(*args, **kwargs):
            dirs.reverse()
            yield folder, dirs, files[::-1]

    monkeypatch.setattr(os, "walk", reversed_walk)
    assert split_rows(build_dls(recipe, root, cfg, torch.device("cpu")), root) == listed
    assert sum(split == "valid" for split, _, _ in listed) == 6


def test_the_split_file_is_checked_by_resume_interpret_export_and_evaluate(trainer, fixtures, isolated, monkeypatch):
    """split.csv lists every image of the run with its split and label; data that no longer gives that split is
    refused with one line saying how many images differ, and a test set holding training images is refused."""
    import csv
    import json
    import shutil

    from helpers import SignalAt, interrupted_fit

    data = isolated / "mnist_sample"
    shutil.copytree(fixtures / "mnist_sample", data)
    args = ["mnist_sample", "--data", data, "--no-pretrained", "--arch", "resnet18", "--bs", "8", "--no-interpret",
            "--quiet"]
    run_dir = run_dir_of(trainer("fit", *args, "--epochs", "1"))
    stopped = interrupted_fit(trainer, monkeypatch, ["fit", *args, "--epochs", "2"], SignalAt(epoch=1, training=False),
                              isolated / "runs")
    with open(run_dir / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    config = json.loads((run_dir / "config.json").read_text())
    assert sum(r["split"] == "train" for r in rows) == config["data"]["n_train"] == 24
    assert sum(r["split"] == "valid" for r in rows) == config["data"]["n_valid"] == 8
    assert all((data / r["path"]).is_file() and r["path"].split("/")[1] == r["label"] for r in rows)

    evaluated = trainer("evaluate", run_dir, "--data", data / "train", expect=2)
    assert "24 of its 24 images trained this run" in evaluated.stderr and "split.csv" in evaluated.stderr
    assert not (run_dir / "test_metrics.json").exists()

    (data / "valid" / "3" / "0_0.png").unlink()  # the data changed after the runs: one image gone,
    shutil.move(data / "train" / "7" / "1_0.png", data / "valid" / "7" / "moved.png")  # one moved to valid/
    for target, command in ((run_dir, ["interpret", run_dir]), (run_dir, ["export", run_dir, "--format", "torchscript"]),
                            (stopped, ["fit", "--resume", stopped])):
        before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
        refused = trainer(*command, expect=2)
        assert "no longer matches the run's split" in refused.stderr, (command, refused.stderr)
        assert "2 of the run's 32 images missing, 1 new (e.g. train/7/1_0.png)" in refused.stderr
        assert len(without_progress(refused.stderr)) == 1 and "--data" in refused.stderr
        assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before  # nothing written
