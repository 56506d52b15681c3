"""Caches that take image decoding off the training loop.

Small-image recipes (MNIST, CIFAR-10, digits) get the decoded-image cache below; recipes that
resize full photos per item (pets, pets_breeds, folder) get `presize`: a copy of every photo
shrunk once to the resize target.

fastai decodes every PNG with PIL and collates items one by one in Python, every epoch. For
28-32 px images that work, not the model, limits a GPU. Here each image is decoded once into
one uint8 tensor (kept on the training device when it fits, and saved under
<data root>/.tensors/ for the next run), and a batch is a single index into it. fastai's own
batch transforms (IntToFloatTensor, Normalize, augmentation) still run, on the whole batch, on
the device. The recipe's ordinary DataLoaders stay what is exported and used for inference.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.torch_core import TensorCategory, TensorImage

from trainer.data.loaders import labels_of
from trainer.data.locations import data_root
from trainer.errors import CannotWrite
from trainer.files import atomic_path, write_failure
from trainer.progress import counted_map


def cacheable(recipe, cfg) -> bool:
    """Only recipes that train on images at their own size: nothing to resize per item."""
    from trainer.recipes import native_size

    return recipe.transforms is native_size and cfg.cache is not False


def decode(path) -> np.ndarray:
    from trainer.data.images import RGBImage

    return np.asarray(RGBImage.create(path))


def signature(files: list) -> str:
    """Changes when any file is added, removed, renamed, resized or touched."""
    digest = hashlib.sha1()
    for f in files:
        stat = Path(f).stat()
        digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_or_decode(files: list, say, progress=None) -> tuple[torch.Tensor | None, dict]:
    """Every image as one (N, 3, H, W) uint8 tensor (None when the images differ in size), and
    what happened, for config.json. `progress` hears the decoding as the "decode" step (trainer.progress)."""
    start = time.perf_counter()
    path = data_root() / ".tensors" / f"{signature(files)}.pt"
    info = {"path": str(path), "reused": True}
    try:
        images = torch.load(path, weights_only=True)
        if len(images) == len(files):
            say(f"decoded-image cache: {len(files)} images from {path}")
            return images, {**info, "seconds": round(time.perf_counter() - start, 2)}
    except (OSError, RuntimeError, EOFError):
        pass
    info["reused"] = False
    arrays = counted_map(decode, files, max(1, torch.get_num_threads()), progress, "decode")
    if len({a.shape for a in arrays}) != 1:
        say("decoded-image cache: images differ in size, reading them with PIL each epoch instead")
        return None, info
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(images, tmp)
        say(f"decoded-image cache: {len(files)} images decoded once, saved to {path}")
    except (OSError, CannotWrite) as e:
        unsaved(path, e)
        say(f"decoded-image cache: {len(files)} images decoded once (data root not writable: not saved)")
        info["path"] = None
    return images, {**info, "seconds": round(time.perf_counter() - start, 2)}


def cached_loader(dl, images: torch.Tensor, labels: torch.Tensor):
    """`dl` (a fastai TfmdDL) drawing its batches from `images`/`labels` by index, with `dl`'s order,
    batch size and batch transforms. Batches of a cache kept on the GPU are not pinned (they cannot be)."""
    from trainer.device import pin_memory

    def create_batch(indices):
        index = torch.as_tensor(indices, device=images.device)
        return TensorImage(images[index]), TensorCategory(labels[index])

    return dl.new(create_item=lambda i: i, after_item=lambda i: i, create_batch=create_batch,
                  retain=lambda batch, _: batch, num_workers=0,
                  pin_memory=pin_memory(images.device, dl.device))


def cached_dls(dls, say, progress=None):
    """The same DataLoaders with decoded-tensor batches, or None when the images cannot be cached."""
    items = list(dls.train_ds.items) + list(dls.valid_ds.items)
    images, info = load_or_decode(items, say, progress)
    if images is None:
        return None
    labels = torch.tensor(labels_of(dls.train_ds) + labels_of(dls.valid_ds))
    from trainer.device import cache_device

    device = dls.device
    if device is not None:
        home = cache_device(device, images.numel())
        images, labels = images.to(home), labels.to(home)
    n_train = len(dls.train_ds)
    train = cached_loader(dls.train, images[:n_train], labels[:n_train])
    valid = cached_loader(dls.valid, images[n_train:], labels[n_train:])
    fast = DataLoaders(train, valid, path=dls.path, device=device)
    fast.cache_info = {**info, "on": str(images.device), "megabytes": round(images.numel() / 2**20, 1)}
    return fast


def resize_target(recipe, cfg) -> int | None:
    """The side a recipe's per-item Resize produces (pets 224, pets_breeds' presizing 460), if any."""
    from fastai.vision.augment import Resize

    item_tfms = recipe.pipeline(cfg).get("item_tfms")
    return max(item_tfms.size) if isinstance(item_tfms, Resize) else None


# not fastai's resize_images: it bounds the long side (Resize then upsamples), decodes JPEGs in full, whitens 16-bit
def shrink(source: Path, target: Path, side: int) -> bool:
    """Save `source` with its short side at `side` (JPEG q95 for JPEGs, PNG otherwise); False when
    it is already that small (the original is read as it is)."""
    from PIL import Image

    from trainer.data.images import to_rgb

    with Image.open(source) as image:
        if min(image.size) <= side:
            return False
        image.draft("RGB", (side, side))  # JPEG: decode at the smallest scale still >= side
        image = to_rgb(image)
        scale = side / min(image.size)
        if scale < 1:
            image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                                 Image.BILINEAR)  # fastai's Resize default
        if target.suffix == ".jpg":
            image.save(target, quality=95)
        else:
            image.save(target)
    return True


def presize(recipe, cfg, root: Path, skip, say, progress=None) -> dict | None:
    """For recipes that resize full photos per item: shrink every image once to the resize target's
    short side, into <data root>/.resized/<key>/, and point RGBImage at the copies. Each epoch then
    decodes a 224-460 px image instead of a full photo; the crop and resize still happen per item. `progress`
    hears the shrinking as the "presize" step (trainer.progress)."""
    from trainer.data.images import RGBImage, forget_presized_copies, image_files

    forget_presized_copies()
    side = resize_target(recipe, cfg) if cfg.cache is not False else None
    if side is None:
        return None
    start = time.perf_counter()
    files = [f for f in image_files(root) if f not in skip]
    folder = data_root() / ".resized" / f"{signature(files)}-{side}"
    names = [folder / f"{i}{'.jpg' if f.suffix.lower() in ('.jpg', '.jpeg') else '.png'}" for i, f in enumerate(files)]
    reused = (folder / "done.json").is_file()
    if not reused:
        tmp = folder.with_name(f".{folder.name}-{os.getpid()}")
        try:
            write_copies(files, names, tmp, side, progress)
        except (OSError, CannotWrite) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            unsaved(folder, e)
            say(f"resized-image cache: not written ({write_failure(folder, e) or e}): reading the full photos")
            return None
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    made = set(json.loads((folder / "done.json").read_text())["copies"])
    RGBImage.copies = {str(f): n for f, n in zip(files, names) if n.name in made}
    info = {"path": str(folder), "side": side, "copies": len(RGBImage.copies), "of": len(files), "reused": reused,
            "seconds": round(time.perf_counter() - start, 2)}
    say(f"resized-image cache: {info['copies']} of {len(files)} images at short side {side} "
        f"{'from' if reused else 'written to'} {folder}")
    return info


def write_copies(files: list, names: list, tmp: Path, side: int, progress=None) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    shrunk = counted_map(lambda i: shrink(files[i], tmp / names[i].name, side), range(len(files)),
                        max(1, os.cpu_count() or 1), progress, "presize",
                        lambda done: f"{sum(done):,} shrunk to short side {side}")
    (tmp / "done.json").write_text(json.dumps({"side": side, "copies": [n.name for n, s in zip(names, shrunk) if s]}))


def unsaved(path: Path, error: Exception) -> None:
    """A cache that cannot be written is only slower (a read-only data root, a name too long), except on a full
    disk: that is said in one line (CannotWrite), before the run directory exists, as the run would fail too."""
    failure = write_failure(path, error)
    if failure is None:
        raise error
    if failure.errno in (errno.ENOSPC, errno.EDQUOT):
        raise CannotWrite(f"{failure}; free space under the data root ({data_root()}) or train without the "
                          f"caches: --no-cache", failure.path, failure.errno) from None


@contextmanager
def swapped_dls(learn, fast_dls):
    """Train on `fast_dls`; the learner gets its ordinary DataLoaders back (for export and inference)."""
    if fast_dls is None:
        yield
        return
    original, learn.dls = learn.dls, fast_dls
    try:
        yield
    finally:
        learn.dls = original
