"""Where data lives, and what counts as an image: shared by data.py (finding datasets), images.py (scanning
them) and cache.py (the caches under the data root). No heavy imports: `trainer datasets` reads these."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def data_root() -> Path:
    return Path(os.environ.get("TRAINER_DATA", "datasets")).expanduser()


def offline() -> bool:
    return os.environ.get("TRAINER_OFFLINE", "") not in ("", "0", "false")


def fastai_data_dir() -> Path:
    """Where fastai's untar_data extracts to, read without importing fastai."""
    home = Path(os.environ.get("FASTAI_HOME", "~/.fastai")).expanduser()
    parser = configparser.ConfigParser()
    parser.read(home / "config.ini")
    data = Path(parser.get("DEFAULT", "data", fallback="data")).expanduser()
    return data if data.is_absolute() else home / data
