"""The decoded-image cache: the same batches as fastai's PIL path, reused across runs, refreshed on change."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from helpers import draw, run_dir_of
from PIL import Image

from trainer.data.cache import cached_dls
from trainer.config import FitConfig
from trainer.data.loaders import build_dls
from trainer.data.source import locate
from trainer.recipes import get_recipe


def recipe_dls(name, data):
    recipe = get_recipe(name)
    cfg = replace(FitConfig(name, bs=8).resolve(recipe), workers=0)
    return build_dls(recipe, locate(recipe, str(data)), cfg, torch.device("cpu"))


def test_cached_batches_equal_fastais(fixtures, isolated):
    data = isolated / "cifar10"
    shutil.copytree(fixtures / "cifar10", data)  # this test changes a file
    dls = recipe_dls("cifar10", data)
    said = []
    fast = cached_dls(dls, said.append)
    assert fast.cache_info["reused"] is False and "decoded once" in said[-1]
    assert len(fast.train) == len(dls.train) and len(fast.valid) == len(dls.valid)
    # validation is unshuffled: batch for batch, the same pixels and labels as PIL decoding gives
    for (x_pil, y_pil), (x_fast, y_fast) in zip(dls.valid, fast.valid):
        assert type(x_fast) is type(x_pil) and x_fast.dtype == x_pil.dtype == torch.float32
        assert torch.equal(x_pil, x_fast) and torch.equal(y_pil, y_fast)
    # a shuffled epoch sees every training image once (drop_last drops the partial batch)
    seen = sum(len(y) for _, y in fast.train)
    assert seen == len(dls.train) * dls.train.bs

    # the next run reads the saved tensor; a changed file makes it decode again
    assert cached_dls(dls, said.append).cache_info["reused"] is True
    first = dls.train_ds.items[0]
    draw(first, 0, 10, size=(32, 32), mode="RGB", seed=99)
    assert cached_dls(dls, said.append).cache_info["reused"] is False


def test_images_of_different_sizes_are_not_cached(fixtures, isolated):
    data = isolated / "mixed"
    shutil.copytree(fixtures / "mnist_sample", data)
    draw(data / "train" / "3" / "big.png", 0, 2, size=(40, 40))
    said = []
    assert cached_dls(recipe_dls("mnist_sample", data), said.append) is None
    assert "differ in size" in said[-1]


def test_fit_records_the_cache(trainer, fixtures, digits_run):
    run_dir, _ = digits_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["options"]["cache"] is True
    # every image (1,437 training + 360 validation) decoded once: 28x28 RGB bytes each
    assert config["data"]["decoded_cache"]["megabytes"] == round(1797 * 3 * 28 * 28 / 2**20, 1)
    result = trainer("fit", "mnist", "--data", fixtures / "mnist_png", "--no-cache", "--no-pretrained",
                     "--epochs", "1", "--bs", "8", "--arch", "resnet18", "--no-interpret")
    config = json.loads((run_dir_of(result) / "config.json").read_text())
    assert config["options"]["cache"] is False and config["data"]["decoded_cache"] is None


def test_photos_are_shrunk_once_and_keep_their_paths(trainer, fixtures, isolated):
    args = ["fit", "pets", "--data", fixtures / "oxford-iiit-pet", "--size", "32", "--no-pretrained", "--epochs", "1",
            "--bs", "4", "--arch", "resnet18"]
    cached = json.loads((run_dir_of(trainer(*args)) / "config.json").read_text())
    info = cached["data"]["resized_cache"]
    assert info["side"] == 32 and info["copies"] == info["of"] == 24 and info["reused"] is False
    copies = sorted(Path(info["path"]).glob("*.jpg"))
    assert len(copies) == 24
    with Image.open(copies[0]) as image:
        assert min(image.size) == 32  # the fixture photos are 64x48
    run_dir = run_dir_of(trainer(*args))
    again = json.loads((run_dir / "config.json").read_text())
    assert again["data"]["resized_cache"]["reused"] is True
    # the items keep their own paths: the same split, and top losses name the original files
    assert again["data"]["split_sha256"] == cached["data"]["split_sha256"]
    with open(run_dir / "top_losses.csv", newline="") as f:
        assert all(row["path"].startswith(str(fixtures)) for row in csv.DictReader(f))
    plain = json.loads((run_dir_of(trainer(*args, "--no-cache")) / "config.json").read_text())
    assert plain["data"]["resized_cache"] is None and plain["data"]["split_sha256"] == cached["data"]["split_sha256"]


def test_bench_loader_rows(trainer, fixtures, isolated):
    """`trainer bench` plumbing, on its cheapest row (the speeds themselves are the benchmark's to report)."""
    out = isolated / "bench.json"
    table = trainer("bench", "mnist", "--data", fixtures / "mnist_png", "--rows", "loader", "--bs", "4",
                    "--json-out", out).stdout
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"loader (pil)", "loader (cache)"} and "loader (cache)" in table
    # --json, as in every command: the same table as JSON on stdout instead
    printed = json.loads(trainer("bench", "mnist", "--data", fixtures / "mnist_png", "--rows", "loader", "--bs", "4",
                                 "--json").stdout)
    assert set(printed["rows"]) == set(rows) and printed.keys() == json.loads(out.read_text()).keys()
    for name, row in rows.items():  # the table shows the figures of the JSON
        assert row["images_per_s"] > 0 and row["wall_s"] is None
        assert f"{row['images_per_s']:10.1f}".strip() in next(line for line in table.splitlines() if name in line)
    assert "unknown --rows fast" in trainer("bench", "mnist", "--data", fixtures / "mnist_png", "--rows", "fast",
                                            expect=2).stderr


def test_bench_loader_speed_counts_the_images_it_timed(monkeypatch):
    """images_per_second: the images of the batches drawn (at most `batches`, a last one short or not) over
    the time it took, here on a clock that reads 10 s, then 12.5 s."""
    import time

    import torch

    from trainer.bench import images_per_second

    batches = [(torch.zeros(n, 3, 2, 2), None) for n in (4, 4, 4, 3)]
    for limit, images in ((2, 8), (4, 15), (10, 15)):
        clock = iter([10.0, 12.5])
        with monkeypatch.context() as m:
            m.setattr(time, "perf_counter", lambda: next(clock))
            assert images_per_second(batches, limit) == images / 2.5, limit
