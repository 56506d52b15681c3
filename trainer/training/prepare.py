"""Everything a run needs before its run directory exists: the options resolved once, the data checked and
loaded, the learner built, and with --lr auto the rate found (with --lr review, lr_find's suggestions for the
gate, training.gate). Bad input fails here and leaves nothing behind."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from fastai.callback.progress import ProgressCallback
from fastai.torch_core import set_seed

from trainer.config import FitConfig, Machine
from trainer.data.cache import cacheable, cached_dls, presize, resize_target, swapped_dls
from trainer.data.images import image_files, readable_or_refuse, scan
from trainer.data.loaders import build_dls
from trainer.data.source import locate
from trainer.device import default_workers, resolve_device, resolve_precision
from trainer.errors import BadInput
from trainer.model.learner import apply_precision, create_learner
from trainer.options import LR_WORDS, check_lr_processes
from trainer.recipes import Recipe, get_recipe
from trainer.runs.store import check_writable
from trainer.training.distributed import join, world_from_env
from trainer.training.events import Events
from trainer.training.lrfind import find_lr


@dataclass(frozen=True)
class TrainingData:
    """The recipe's data, checked: where it is, its DataLoaders and what was left out or cached."""

    path: Path
    dls: object  # fastai DataLoaders
    skipped: list  # (path, reason) of the unreadable images left out
    fast_dls: object = None  # the same data as decoded-tensor batches (cache.py), used while training
    presized: dict | None = None  # the resized-image cache (cache.presize), for config.json


@dataclass(frozen=True)
class Prepared:
    """A checked recipe, its data and a learner, ready to train; no run directory yet."""

    recipe: Recipe
    cfg: FitConfig  # resolved once, frozen
    asked: FitConfig  # as the user gave it (None: not set), recorded so --resume can re-resolve on another machine
    data: TrainingData
    learn: object
    world: object  # distributed.World: this process's rank among how many
    precision: object  # device.Precision: how the model computes, and why
    lr_found: dict | None = None  # --lr auto or review: lr_find's curve and suggestions


def prepare(asked: FitConfig, events: Events) -> Prepared:
    """Resolve the options (recipe defaults, then what was asked, then this machine and its data), build the data
    and the learner, and with --lr auto or review run lr_find. Every check happens here, before a run directory
    exists. With --lr review cfg.lr stays "review": the gate (training.gate) resolves it once a person chose."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    recipe = get_recipe(asked.recipe)
    defaults = asked.resolve(recipe)  # what was asked over the recipe's defaults; the machine comes next
    recipe = recipe.configured(defaults)  # --labels, --label-re, multi-label: their layout check and metrics
    check_writable(Path(defaults.out))
    world = world_from_env()
    data_path = locate(recipe, defaults.data, sha256=defaults.data_sha256, note=events.note,
                       progress=events.publish if world.main else None)  # rank 0 speaks for the job
    if asked.labels:  # a CSV outside --data: recorded by its full path, so resume and interpret find it anywhere
        from trainer.data.labels import labels_path

        found = labels_path(asked.labels, data_path)
        if not found.resolve().is_relative_to(data_path.resolve()) or Path(asked.labels).is_absolute():
            asked = replace(asked, labels=str(found.resolve()))
            defaults = replace(defaults, labels=asked.labels)
    check_lr_processes(defaults.lr, world.size)
    device = resolve_device(defaults.device, world.local_rank if world.launched else None)
    resolve_precision(defaults.precision, device)  # a precision this device cannot run fails before the data is read
    world = join(world, device)
    events.muted = not world.main  # rank 0 speaks for the job
    events.note(f"recipe {recipe.name}: data {data_path}, device {device}")
    skipped = skip_unreadable(data_path, events)
    precision = resolve_precision(defaults.precision, device, input_side(recipe, defaults, data_path, skipped))
    machine = Machine(device=str(device), precision=precision.name,
                      workers=default_workers(device.type) if defaults.workers is None else defaults.workers,
                      cache=defaults.cache is not False and (cacheable(recipe, defaults)
                                                             or resize_target(recipe, defaults) is not None))
    cfg = asked.resolve(recipe, machine)
    if world.launched:
        events.note(f"distributed: {world.size} process(es) ({world.backend}), batch size {cfg.bs} per process "
                    f"({cfg.bs * world.size} per step), lr {cfg.lr} as given")
    data, learn = load(recipe, cfg, data_path, device, precision, skipped, events)
    lr_found = None
    if cfg.lr in LR_WORDS:
        lr_found = auto_lr(learn, data.fast_dls, recipe, events, cfg.lr)
        if cfg.lr == "auto":
            cfg = asked.resolve(recipe, machine, lr=lr_found["suggestions"]["valley"])
    return Prepared(recipe, cfg, asked, data, learn, world, precision, lr_found)


def load(recipe: Recipe, cfg: FitConfig, data_path: Path, device, precision, skipped: list, events: Events):
    """(TrainingData, learner): the DataLoaders, the model computing in its precision, and the caches."""
    dls = load_data(recipe, cfg, data_path, device, skipped)
    events.note(f"precision {precision.name}{' + channels_last' if precision.channels_last else ''}: "
                f"{precision.reason}")
    learn = create_learner(dls, cfg, recipe, Path("."))
    apply_precision(learn, precision)
    learn.remove_cb(ProgressCallback)  # training publishes its own progress events
    fast_dls = cached_dls(dls, events.note, events.publish) if cacheable(recipe, cfg) else None
    presized = presize(recipe, cfg, data_path, {path for path, _ in skipped}, events.note, events.publish)
    return TrainingData(data_path, dls, skipped, fast_dls, presized), learn


def load_data(recipe: Recipe, cfg: FitConfig, data_path: Path, device, skipped: list):
    """The recipe's DataLoaders without the unreadable files, refused when they cannot train a classifier."""
    set_seed(cfg.seed)
    dls = build_dls(recipe, data_path, cfg, device, skip={path for path, _ in skipped})
    if len(dls.vocab) < 2:
        raise BadInput(f"{data_path}: only {len(dls.vocab)} class has readable images; "
                       f"a classifier needs at least 2 (see the unreadable files above)")
    if len(dls.valid_ds) == 0 or len(dls.train_ds) == 0:
        raise BadInput(f"{data_path}: the split left {len(dls.train_ds)} training and {len(dls.valid_ds)} "
                       f"validation images; add images or change --valid-pct")
    if len(dls.train) == 0:  # fastai drops the last partial training batch
        raise BadInput(f"--bs {cfg.bs} is larger than the {len(dls.train_ds)} training images, so an epoch "
                       f"has no batch; use --bs {max(1, len(dls.train_ds) // 2)} or add images")
    return dls


def input_side(recipe: Recipe, cfg: FitConfig, data_path: Path, skipped: list) -> int | None:
    """The side of the images the model sees: the recipe's resize size, or the images' own (MNIST's 28)."""
    if recipe.size:
        return cfg.size
    from PIL import Image

    left_out = {path for path, _ in skipped}
    first = next((f for f in image_files(data_path) if f not in left_out), None)
    if first is None:
        return None
    with Image.open(first) as image:
        return max(image.size)


def auto_lr(learn, fast_dls, recipe: Recipe, events: Events, mode: str = "auto") -> dict:
    """--lr auto: lr_find, whose valley suggestion becomes the learning rate (before any run directory exists,
    so config.json is written once, with the rate used). --lr review: the same lr_find, whose suggestions the
    gate shows a person (training.gate)."""
    events.note(f"--lr {mode}: running lr_find first")
    with swapped_dls(learn, fast_dls):
        found = find_lr(learn)
    events.publish("lr_find", suggestions=found["suggestions"], points=len(found["losses"]))
    if "valley" not in found["suggestions"]:
        raise BadInput(f"lr_find's loss diverged after {len(found['losses'])} points, too early for a valley "
                       f"suggestion; pass --lr, or see the curve with `trainer lr-find {recipe.name}` (a lower "
                       f"--end-lr ramps up more slowly)")
    if mode == "auto":  # review: the lr_review event shows them, with the question
        events.note(f"lr_find suggests {', '.join(f'{k} {v:.2e}' for k, v in found['suggestions'].items())}: "
                    f"training with valley")
    return found


def skip_unreadable(data_path: Path, events: Events) -> list:
    """Find the images that cannot be decoded; warn (even with --quiet); fail if none is left."""
    total, bad = scan(data_path, warn=events.warn, progress=events.publish)
    readable_or_refuse(total, bad, str(data_path), "check the files or point --data at the right folder",
                       "the full list goes to the run's skipped_images.txt", warn=events.warn)
    return bad
