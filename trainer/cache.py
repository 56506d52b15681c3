"""The decoded-image cache for small-image recipes (MNIST, CIFAR-10, digits).

fastai decodes every PNG with PIL and collates items one by one in Python, every epoch. For
28-32 px images that work, not the model, limits a GPU. Here each image is decoded once into
one uint8 tensor (kept on the training device when it fits, and saved under
<data root>/.tensors/ for the next run), and a batch is a single index into it. fastai's own
batch transforms (IntToFloatTensor, Normalize, augmentation) still run, on the whole batch, on
the device. The recipe's ordinary DataLoaders stay what is exported and used for inference.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.torch_core import TensorCategory, TensorImage

from trainer.data import data_root, labels_of
from trainer.runs import atomic_path

MAX_DEVICE_BYTES = 2 * 1024**3  # a larger cache stays in CPU memory and is copied batch by batch


def cacheable(recipe, cfg) -> bool:
    """Only recipes that train on images at their own size: nothing to resize per item."""
    from trainer.recipes import native_size

    return recipe.transforms is native_size and cfg.cache is not False


def decode(path) -> np.ndarray:
    from trainer.images import RGBImage

    return np.asarray(RGBImage.create(path))


def signature(files: list) -> str:
    """Changes when any file is added, removed, renamed, resized or touched."""
    digest = hashlib.sha1()
    for f in files:
        stat = Path(f).stat()
        digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_or_decode(files: list, say) -> tuple[torch.Tensor | None, dict]:
    """Every image as one (N, 3, H, W) uint8 tensor (None when the images differ in size), and
    what happened, for config.json."""
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
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(decode, files, chunksize=256))
    if len({a.shape for a in arrays}) != 1:
        say("decoded-image cache: images differ in size, reading them with PIL each epoch instead")
        return None, info
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(images, tmp)
        say(f"decoded-image cache: {len(files)} images decoded once, saved to {path}")
    except OSError:
        say(f"decoded-image cache: {len(files)} images decoded once (data root not writable: not saved)")
        info["path"] = None
    return images, {**info, "seconds": round(time.perf_counter() - start, 2)}


def cached_loader(dl, images: torch.Tensor, labels: torch.Tensor):
    """`dl` (a fastai TfmdDL) drawing its batches from `images`/`labels` by index, with `dl`'s order,
    batch size and batch transforms."""

    def create_batch(indices):
        index = torch.as_tensor(indices, device=images.device)
        return TensorImage(images[index]), TensorCategory(labels[index])

    return dl.new(create_item=lambda i: i, after_item=lambda i: i, create_batch=create_batch,
                  retain=lambda batch, _: batch, num_workers=0)


def cached_dls(dls, say):
    """The same DataLoaders with decoded-tensor batches, or None when the images cannot be cached."""
    items = list(dls.train_ds.items) + list(dls.valid_ds.items)
    images, info = load_or_decode(items, say)
    if images is None:
        return None
    labels = torch.tensor(labels_of(dls.train_ds) + labels_of(dls.valid_ds))
    device = dls.device
    if device is not None and device.type != "cpu" and images.numel() <= MAX_DEVICE_BYTES:
        images, labels = images.to(device), labels.to(device)
    n_train = len(dls.train_ds)
    train = cached_loader(dls.train, images[:n_train], labels[:n_train])
    valid = cached_loader(dls.valid, images[n_train:], labels[n_train:])
    fast = DataLoaders(train, valid, path=dls.path, device=device)
    fast.cache_info = {**info, "on": str(images.device), "megabytes": round(images.numel() / 2**20, 1)}
    return fast


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
