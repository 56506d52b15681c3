"""Reading images safely: find unreadable files before training, and read every mode as RGB.

A dataset scraped together by hand has zero-byte, truncated or misnamed files, and images
in 16-bit, palette, CMYK or RGBA modes. The scan finds the unreadable ones (so they are
skipped and reported instead of crashing an epoch halfway), and RGBImage converts the rest.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from fastai.vision.core import PILImage
from PIL import Image

from trainer.data.listing import list_images
from trainer.data.locations import data_root
from trainer.data.readable import unreadable  # the scan's check, in a module its worker processes import fast
from trainer.errors import BadInput


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL reads: 16-bit and float scaled down, palette/alpha/CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = (0.0, 65535.0) if image.mode.startswith("I;16") else (pixels.min(), pixels.max())
        scaled = (pixels - low) * (255.0 / max(high - low, 1e-12))
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency is only kept through RGBA
    return image if image.mode == "RGB" else image.convert("RGB")


class RGBImage(PILImage):
    """fastai's PILImage, reading 16-bit, float, palette, CMYK and alpha images as 8-bit RGB.

    `copies` maps an image's path to a smaller copy made once (cache.presize): the item keeps its
    own path everywhere (splits, labels, top losses), only the pixels come from the copy."""

    copies: dict[str, Path] = {}

    @classmethod
    def create(cls, fn, **kwargs):
        if isinstance(fn, (str, Path)):
            return cls(open_image(cls.copies.get(str(fn), fn)))
        if isinstance(fn, bytes):
            return cls(open_image(fn))
        return super().create(fn, **kwargs)


def forget_presized_copies() -> None:
    """Read every image from its own file again: a run that trained on presized copies (cache.presize)
    leaves none behind for later readers in the same process (inference, another run, a notebook)."""
    RGBImage.copies = {}


def open_image(source: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """An image file (a path, or its bytes) decoded as 8-bit RGB: how every image trainer reads is opened.
    `max_pixels`: refuse (ValueError) an image larger than this before decoding its pixels."""
    import io

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        if max_pixels is not None and opened.width * opened.height > max_pixels:
            raise ValueError(f"{opened.width}x{opened.height} pixels, over the limit of {max_pixels}")
        opened.load()
        image = opened._new(opened.im)  # detached from the file, as fastai's load_image does
    return to_rgb(image)


def image_files(root: Path) -> list[Path]:
    """The images under `root` as listing.list_images lists them (and as every recipe's builder trains on)."""
    return list_images(root).files


# Below this many files the scan runs in this process: starting worker processes costs more than it saves
# (70,000 MNIST PNGs on 2 cores: 5.1-6.5 s serially, 3.7-3.9 s in 2 processes; threads were slower, 10-11 s)
SCAN_IN_PROCESSES = 2_000


def scan_workers(count: int) -> int:
    """Processes the scan of `count` files decodes in: one per core (fastai's verify_images runs in processes
    too; PIL's decoding releases the GIL, but opening a small file and parsing its header in Python does not)."""
    import os

    return 1 if count < SCAN_IN_PROCESSES else max(1, min(32, os.cpu_count() or 1))


def find_unreadable(files: list[Path], workers: int | None = None, progress=None) -> list[tuple[Path, str]]:
    """The unreadable files among `files` as (path, reason), in the files' order, whatever `workers` (processes;
    1: serially, in this one; None: scan_workers): each file's answer depends on it alone. `progress`: a publish
    callable that hears the "scan" step (trainer.progress)."""
    from trainer.progress import counted_map

    workers = scan_workers(len(files)) if workers is None else workers
    reasons = counted_map(unreadable, files, workers, progress, "scan",
                          lambda found: f"{sum(why is not None for why in found):,} unreadable", processes=True)
    return [(f, why) for f, why in zip(files, reasons) if why]


def scan(root: Path, warn=None, progress=None, workers: int | None = None) -> tuple[int, list[tuple[Path, str]]]:
    """How many images `root` holds, and the unreadable ones as (path, reason).

    The files are listing.list_images's (the recipes' builders use the same listing); entries that are not
    regular files are unreadable without being opened. Decoding results are cached in <data root>/.scans/,
    keyed by the files' count, sizes and times, so later runs on unchanged data only list the folder. The
    cache holds paths relative to the root: the unreadable files come back in the form `root` is given
    (relative or absolute), the form the DataLoaders' items take. `warn`: where the links not followed are
    said (default stderr). `progress`: hears the "scan" step when the files are decoded (trainer.progress);
    `workers`: the processes decoding them (find_unreadable).
    """
    listing = list_images(root)
    if listing.warning():
        (warn or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True)))(listing.warning())
    files = listing.files
    stats = [f.stat() for f in files]
    signature = [len(files), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]
    cache = data_root() / ".scans" / (hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16] + "-3.json")  # 3: listing
    total = len(files) + len(listing.unreadable)
    try:
        cached = json.loads(cache.read_text())
        if cached["signature"] == signature:
            return total, listing.unreadable + [(root / p, why) for p, why in cached["bad"]]
    except (OSError, ValueError, KeyError):
        pass
    bad = find_unreadable(files, workers, progress)
    try:
        from trainer.files import write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"root": str(root.resolve()), "signature": signature, "bad": [[p.relative_to(root).as_posix(), w] for p, w in bad]})
    except (OSError, BadInput):
        pass  # a read-only or full data root only costs the next run a rescan
    return total, listing.unreadable + bad


def readable_or_refuse(total: int, bad: list[tuple[Path, str]], where: str, fix: str, listed: str = "",
                       warn=None) -> None:
    """The one report of unreadable images, for every command that reads a set of them: fail (BadInput) when
    none of the `total` can be read, else one warning line naming the first few (`warn`: training's events;
    by default stderr, even with --quiet); `listed` says where the full list goes."""
    if not bad:
        return
    first = "; ".join(f"{path} ({why})" for path, why in bad[:3])
    if len(bad) == total:
        raise BadInput(f"none of the {total} images in {where} can be read (e.g. {first}); {fix}")
    text = (f"skipping {len(bad)} unreadable of {total} images: {first}{' ...' if len(bad) > 3 else ''}"
            f"{f' ({listed})' if listed else ''}")
    if warn is not None:
        warn(text)
    else:
        print(f"warning: {text}", file=sys.stderr, flush=True)
