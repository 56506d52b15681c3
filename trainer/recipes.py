"""The recipe registry: one declaration per dataset, as the fastai course builds it.

Importing this module must stay cheap (`trainer datasets`, `trainer --help`): fastai is
imported inside each recipe's builder, never at module level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from trainer.errors import BadInput, did_you_mean


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    build: Callable  # (path, cfg, loader_kwargs, skip) -> fastai DataLoaders; skip: unreadable files; the
    # loader kwargs carry `transforms`' item_tfms/batch_tfms, so training and inference share one declaration
    layout: str  # the expected on-disk layout, shown in errors and in `trainer datasets`
    check: str  # which layout check applies: "splits", "pets" or "folder" (see data.py)
    epochs: int
    lr: float
    metrics: tuple[str, ...]
    url: str | None = None  # attribute of fastai's URLs; None: no download
    folder: str | None = None  # folder name under a data root (the name untar_data extracts to)
    splits: tuple[str, str] | None = None  # (train, valid) folder names for check="splits"
    pretrained: bool = True
    size: int | None = None  # images are resized to this; None keeps their own size
    bs: int = 64
    valid_pct: float | None = None  # random split instead of the folders' split
    transforms: Callable = None  # cfg -> dict(item_tfms=..., batch_tfms=...): also rebuilds inference without pickle
    baselines: tuple = ()  # Baseline per (epochs, pretrained) setting: what such a run is expected to reach
    made_from: str | None = None  # a recipe whose data is written here, from this package, when none is found
    labels: dict | None = field(default=None, hash=False)  # vocab -> the name people read (pets: "True" -> "cat"); the vocab stays
    labels_file: str | None = None  # check="labels": the CSV (--labels) that lists the images and their labels
    aug: bool = False  # train with aug_transforms unless --no-aug (see `pipeline`)

    def pipeline(self, cfg) -> dict:
        """item_tfms and batch_tfms of the run: the recipe's `transforms`, and with cfg.aug fastai's aug_transforms
        (cfg's min_scale, flip_vert, max_rotate, max_lighting). Their random parts run on training batches only
        (fastai's split_idx): validation and inference see the same pipeline with or without them, and TTA
        (fastai's Learner.tta) switches them back on."""
        if not getattr(cfg, "aug", False):
            return self.transforms(cfg)
        return augmented(self, cfg)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    def judge(self, options: dict, final: dict) -> dict | None:
        """The verdict of the baseline declared for the run's settings (epochs, pretrained, arch); else 'not
        comparable', naming the baseline closest to them. None when the recipe declares none."""
        if not self.baselines:
            return None
        same = [b for b in self.baselines if b.matches(options)]
        return (same or sorted(self.baselines, key=lambda b: b.distance(options)))[0].judge(options, final)

    def configured(self, cfg) -> "Recipe":
        """This recipe as a run's options make it: the folder recipe labelled by a CSV (--labels) or by file names
        (--label-re) has another layout check, and a multi-label model (--label-delim) other metrics."""
        from dataclasses import replace

        if getattr(cfg, "labels", None):
            multi = getattr(cfg, "label_delim", None) is not None
            return replace(self, check="labels", labels_file=cfg.labels, metrics=MULTI_METRICS if multi else self.metrics,
                           layout=f"images anywhere under --data, listed in {cfg.labels} (paths relative to --data)")
        if getattr(cfg, "label_re", None):
            return replace(self, check="names", layout=f"images anywhere under --data, named so that --label-re "
                                                       f"'{cfg.label_re}' matches")
        return self

    def display_names(self, vocab) -> list[str]:
        """The name shown for each class of `vocab`: the recipe's label for it, else the class itself."""
        return [(self.labels or {}).get(str(c), str(c)) for c in vocab]


@dataclass(frozen=True)
class Baseline:
    """An expected result: `metric` at most (error_rate) or at least (accuracy) `value`, for runs of
    `epochs` epochs with resnet34, pretrained or not; `source` says where the figure comes from."""

    metric: str
    value: float
    epochs: int
    pretrained: bool
    source: str

    def matches(self, options: dict) -> bool:
        return (options.get("epochs") == self.epochs and bool(options.get("pretrained")) == self.pretrained
                and options.get("arch") == "resnet34")

    def distance(self, options: dict) -> tuple:
        return (bool(options.get("pretrained")) != self.pretrained, abs((options.get("epochs") or 0) - self.epochs))

    def judge(self, options: dict, final: dict) -> dict:
        """Whether a run (its resolved options and final metrics) met this baseline, if comparable."""
        verdict = {"metric": self.metric, "expected": self.value, "epochs": self.epochs,
                   "pretrained": self.pretrained, "arch": "resnet34", "source": self.source}
        if not self.matches(options) or self.metric not in final:
            return {**verdict, "status": "not comparable", "actual": final.get(self.metric)}
        actual = final[self.metric]
        met = actual <= self.value if lower_is_better(self.metric) else actual >= self.value
        return {**verdict, "status": "met" if met else "missed", "actual": actual}


RECIPES: dict[str, Recipe] = {}
MULTI_METRICS = ("f1_score", "accuracy_multi")  # a multi-label model's: fastai's F1ScoreMulti (macro), accuracy_multi


def lower_is_better(metric: str) -> bool:
    """fastai's own rule (TrackerCallback): a loss or an error is better lower, any other metric higher."""
    return "loss" in metric or "error" in metric


def improves(metric: str, value: float, best: float | None) -> bool:
    return best is None or (value < best if lower_is_better(metric) else value > best)


def native_size(cfg) -> dict:
    """Images used at their own size (MNIST's 28, CIFAR's 32): no transforms."""
    return {}


def resized(cfg) -> dict:
    from fastai.vision.all import Resize

    return dict(item_tfms=Resize(cfg.size))


def presized(cfg) -> dict:
    """fastbook chapter 5's presizing: Resize to 460 per item (for --size 224), then one crop of the whole batch
    down to the size: the entire image without --aug (and at validation), a random part of it with --aug."""
    from fastai.vision.all import RandomResizedCropGPU, Resize

    return dict(item_tfms=Resize(round(cfg.size * 460 / 224)),
                batch_tfms=[RandomResizedCropGPU(cfg.size, min_scale=1.0, ratio=(1, 1))])


TRANSFORMS = {f.__name__: f for f in (native_size, resized, presized)}  # model.json names the one a run used


def augmented(recipe: Recipe, cfg) -> dict:
    """The recipe's pipeline plus fastai's aug_transforms (flip, rotate, zoom, warp, lighting) on the whole batch;
    a presizing recipe's final crop becomes aug_transforms' random one (--min-scale). Only batch transforms are
    added, each applied to training batches only: the validation batch is the same with or without --aug."""
    from fastai.vision.all import aug_transforms

    presizes = recipe.transforms is presized
    batch_tfms = aug_transforms(size=cfg.size if presizes else None, min_scale=cfg.min_scale if presizes else 1.0,
                                flip_vert=bool(cfg.flip_vert), max_rotate=cfg.max_rotate,
                                max_lighting=cfg.max_lighting)
    return {**recipe.transforms(cfg), "batch_tfms": batch_tfms}


def register(**spec):
    """Declare a recipe: the decorated function builds its DataLoaders."""
    spec.setdefault("transforms", native_size)

    def wrap(build):
        summary = (build.__doc__ or "").strip().splitlines()[0]
        RECIPES[build.__name__] = Recipe(name=build.__name__, summary=summary, build=build, **spec)
        return build

    return wrap


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise BadInput(
            f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}; "
            f"choose one of: {', '.join(RECIPES)} (see `trainer datasets`)"
        )
    return RECIPES[name]


# Labelling functions live at module level so exported models unpickle anywhere.
def is_cat(fname) -> bool:
    """Oxford-IIIT Pet names cat breeds with a capital letter (Persian_1.jpg, beagle_2.jpg)."""
    return Path(fname).name[0].isupper()


PETS_BREED_PATTERN = r"^(.+)_\d+\.jpg$"


def from_folder(path: Path, skip, train="train", valid="valid", valid_pct=None, seed=None,
                item_tfms=None, batch_tfms=None, img_cls=None, **loader):
    """fastai's ImageDataLoaders.from_folder (the same DataBlock), with its files listed by readable_images
    (sorted, so a random split is the same on every copy; the scan's listing) without the unreadable
    files in `skip`."""
    from fastai.vision.all import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, ImageDataLoaders,
                                   PILImage, RandomSplitter, parent_label)

    splitter = (GrandparentSplitter(train_name=train, valid_name=valid) if valid_pct is None
                else RandomSplitter(valid_pct, seed=seed))
    get_items = partial(readable_images, folders=None if valid_pct else [train, valid], skip=frozenset(skip))
    block = DataBlock(blocks=(ImageBlock(img_cls or PILImage), CategoryBlock), get_items=get_items,
                      splitter=splitter, get_y=parent_label, item_tfms=item_tfms, batch_tfms=batch_tfms)
    return ImageDataLoaders.from_dblock(block, path, path=path, **loader)


def readable_images(path, folders=None, skip=frozenset()):
    """The images listing.list_images finds (the scan's own list: links followed once, sorted, no FIFOs or
    dangling links), as fastai's L, without the unreadable files in `skip`."""
    from fastcore.foundation import L

    from trainer.data.listing import list_images

    return L(f for f in list_images(Path(path), folders=folders).files if f not in skip)


def _folder_split(path: Path, cfg, loader: dict, skip, train: str, valid: str):
    if cfg.valid_pct:  # a random split of the training folder instead of the official one
        return from_folder(path / train, skip, train=".", valid_pct=cfg.valid_pct, seed=cfg.seed, **loader)
    return from_folder(path, skip, train=train, valid=valid, **loader)


@register(url="MNIST_SAMPLE", folder="mnist_sample", check="splits", splits=("train", "valid"),
          layout="train/{3,7}/*.png, valid/{3,7}/*.png (labels.csv optional)",
          epochs=2, lr=1e-2, metrics=("error_rate",),
          baselines=(Baseline("error_rate", 0.005, 2, True, "fastai course: a fine-tuned resnet34 reaches about 0.1% error"),
                     Baseline("error_rate", 0.005, 1, False, "1 epoch from scratch on a 2-core CPU: 0.15-0.39% (2026-11)")))
def mnist_sample(path, cfg, loader, skip):
    """MNIST's 3s and 7s, 28x28 (the course's first model)."""
    return _folder_split(path, cfg, loader, skip, "train", "valid")


@register(url="MNIST", folder="mnist_png", check="splits", splits=("training", "testing"),
          layout="training/{0..9}/*.png, testing/{0..9}/*.png",
          epochs=2, lr=2e-2, metrics=("error_rate", "accuracy"),
          baselines=(Baseline("error_rate", 0.01, 2, True, "no course figure: fine-tuning must do at least as well as 2 "
                                                          "epochs from scratch (0.81%, measured 2026-11)"),
                     Baseline("error_rate", 0.01, 2, False, "2 epochs from scratch: 0.81% (2-core CPU, 2026-11)")))
def mnist(path, cfg, loader, skip):
    """All 70,000 MNIST digits, 10 classes, 28x28."""
    return _folder_split(path, cfg, loader, skip, "training", "testing")


@register(url="CIFAR", folder="cifar10", check="splits", splits=("train", "test"),
          layout="train/<class>/*.png, test/<class>/*.png, labels.txt",
          epochs=10, lr=1e-3, metrics=("error_rate", "accuracy"),
          baselines=(Baseline("error_rate", 0.2, 10, True, "fastai course: about 80% accuracy after 10 epochs "
                                                           "fine-tuning resnet34"),
                     Baseline("error_rate", 0.5, 1, False, "1 epoch from scratch on the official test split: 46.5% (2026-11)")))
def cifar10(path, cfg, loader, skip):
    """CIFAR-10, 60,000 32x32 photos in 10 classes (official test split; --valid-pct for a random one)."""
    return _folder_split(path, cfg, loader, skip, "train", "test")


@register(url="PETS", folder="oxford-iiit-pet", check="pets",
          layout="images/<Breed>_<n>.jpg (cat breeds capitalised, dog breeds lower case), annotations/",
          epochs=1, lr=2e-3, metrics=("error_rate",), size=224, valid_pct=0.2, transforms=resized,
          labels={"True": "cat", "False": "dog"},
          baselines=(Baseline("error_rate", 0.02, 1, True, "fastai course lesson 1: fine_tune(1) from ImageNet weights, about 1% error"),))
def pets(path, cfg, loader, skip):
    """Oxford-IIIT Pet: cat or dog (the course's is_cat: True or False, shown as cat/dog)."""
    from fastai.vision.all import ImageDataLoaders

    files = readable_images(path / "images", skip=skip)
    return ImageDataLoaders.from_name_func(path, files, is_cat, valid_pct=cfg.valid_pct, seed=cfg.seed, **loader)


@register(url="PETS", folder="oxford-iiit-pet", check="pets",
          layout="images/<breed>_<n>.jpg: 37 breeds, annotations/",
          epochs=2, lr=2e-3, metrics=("error_rate", "accuracy"), size=224, valid_pct=0.2, transforms=presized, aug=True,
          baselines=(Baseline("error_rate", 0.08, 2, True, "fastai book chapter 5: presizing + fine_tune(2), about 7% error"),))
def pets_breeds(path, cfg, loader, skip):
    """Oxford-IIIT Pet: the 37 breeds, with the course's presizing."""
    from fastai.vision.all import ImageDataLoaders

    files = readable_images(path / "images", skip=skip)
    return ImageDataLoaders.from_name_re(path / "images", files, PETS_BREED_PATTERN, valid_pct=cfg.valid_pct,
                                         seed=cfg.seed, **loader)


@register(folder="digits", check="splits", splits=("training", "testing"),
          layout="training/{0..9}/*.png, testing/{0..9}/*.png (written from scikit-learn's digits)",
          epochs=3, lr=1e-2, metrics=("error_rate", "accuracy"), pretrained=False, made_from="scikit-learn",
          baselines=(Baseline("accuracy", 0.9, 3, False, "the test suite's learning threshold; 96-97% measured (2026-11)"),))
def digits(path, cfg, loader, skip):
    """scikit-learn's 1,797 handwritten digits as 28x28 PNGs: works with no network at all."""
    return _folder_split(path, cfg, loader, skip, "training", "testing")


@register(check="folder",
          layout="<class>/*.jpg, or train/<class>/ with valid/<class>/ (or test/<class>/)",
          epochs=1, lr=2e-3, metrics=("error_rate", "accuracy"), size=224, transforms=presized, aug=True)
def folder(path, cfg, loader, skip):
    """Your own images in ImageNet-style class folders (--data required)."""
    if cfg.labels:
        return from_labels_csv(path, cfg, skip, **loader)
    if cfg.label_re:
        return from_name_re(path, cfg, skip, **loader)
    valid = next((v for v in ("valid", "test") if (path / v).is_dir()), None)
    if (path / "train").is_dir() and valid and not cfg.valid_pct:
        return from_folder(path, skip, train="train", valid=valid, **loader)
    root = path / "train" if (path / "train").is_dir() else path
    return from_folder(root, skip, train=".", valid_pct=cfg.valid_pct or 0.2, seed=cfg.seed, **loader)


def breed_of(fname: str) -> str | None:
    match = re.match(PETS_BREED_PATTERN, fname)
    return match.group(1) if match else None


class LabelOf:
    """An image's label(s) as its --labels CSV row gave them (get_y): module level, so model.pkl unpickles."""

    def __init__(self, labels: dict):
        self.labels = labels  # path -> a label, or a list of labels (multi-label)

    def __call__(self, item):
        return self.labels[str(item)]


def from_labels_csv(path: Path, cfg, skip, item_tfms=None, batch_tfms=None, img_cls=None, **loader):
    """fastai's ImageDataLoaders.from_df over a --labels CSV (checked row by row, labels.read_labels), its items
    kept as image paths like every other recipe's: CategoryBlock, or MultiCategoryBlock with --label-delim."""
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, ImageDataLoaders, IndexSplitter,
                                   MultiCategoryBlock, PILImage, RandomSplitter)

    from trainer.data.labels import read_labels

    table = read_labels(path, cfg, skip)
    items = [row.path for row in table.rows]
    if table.has_valid:
        valid = [i for i, row in enumerate(table.rows) if row.valid]
    else:  # fastai's random split, drawn here so that its labels are checked before fastai encodes them
        valid = list(RandomSplitter(cfg.valid_pct or 0.2, seed=cfg.seed)(items)[1])
    chosen = set(valid)
    table.check_vocab([r for i, r in enumerate(table.rows) if i not in chosen], [table.rows[i] for i in sorted(valid)])
    splitter = IndexSplitter(valid)
    multi = cfg.label_delim is not None
    get_y = LabelOf({str(row.path): list(row.labels) if multi else row.labels[0] for row in table.rows})
    block = DataBlock(blocks=(ImageBlock(img_cls or PILImage), MultiCategoryBlock if multi else CategoryBlock),
                      get_y=get_y, splitter=splitter, item_tfms=item_tfms, batch_tfms=batch_tfms)
    return ImageDataLoaders.from_dblock(block, items, path=path, **loader)


def from_name_re(path: Path, cfg, skip, **loader):
    """fastai's ImageDataLoaders.from_name_re on every readable image under --data (each file name checked to
    match first: the one that does not is named), with a random split (--valid-pct, 0.2)."""
    from fastai.vision.all import ImageDataLoaders

    from trainer.data.labels import check_names

    files = readable_images(path, skip=frozenset(skip))
    check_names(files, cfg.label_re, path)
    return ImageDataLoaders.from_name_re(path, files, cfg.label_re, valid_pct=cfg.valid_pct or 0.2, seed=cfg.seed,
                                         **loader)
