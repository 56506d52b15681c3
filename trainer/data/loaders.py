"""A recipe's fastai DataLoaders, and what is read off them without decoding images."""

from __future__ import annotations

from pathlib import Path

from trainer.recipes import Recipe


def build_dls(recipe: Recipe, path: Path, cfg, device, skip=frozenset()):
    """The recipe's DataLoaders, leaving out the unreadable files in `skip`, reading every image as RGB."""
    import torch

    from trainer.data.images import RGBImage

    from trainer.device import pin_memory

    loader = dict(bs=cfg.bs, num_workers=cfg.workers, device=device, img_cls=RGBImage,
                  pin_memory=pin_memory(torch.device("cpu"), device),  # PIL decodes each batch in host memory
                  **recipe.pipeline(cfg))  # the one declaration inference rebuilds too (serving/inference.py)
    return recipe.build(path, cfg, loader, frozenset(skip))


def input_side(recipe: Recipe, cfg, dls) -> int:
    """The side of the images the model sees: the recipe's resize size, or the images' own (MNIST's 28)."""
    if recipe.size:
        return cfg.size
    from PIL import Image

    with Image.open(dls.train_ds.items[0]) as image:
        return max(image.size)


def labels_of(ds) -> list:
    """The class index of every item of a fastai Datasets, without decoding an image; for a multi-label
    Datasets (multi-hot targets), the tuple of each item's label indices. Kept on the Datasets: the split file
    and the decoded cache both need them (2 s each on MNIST)."""
    if getattr(ds, "_class_indices", None) is None:
        ds._class_indices = [int(y) if y.ndim == 0 else tuple(int(i) for i in y.nonzero().flatten())
                             for y in ds.tls[1]]
    return ds._class_indices
