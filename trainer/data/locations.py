"""Where data lives, and what counts as an image: shared by data.py (finding datasets), images.py (scanning
them) and cache.py (the caches under the data root). No heavy imports: `trainer datasets` reads these."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# A dataset version's record (written by the service's trainer/service/versions.py) at the top of the version's
# folder: a dotfile, so no listing ever takes it for an image or a class.
DATASET_MANIFEST = ".trainer-dataset.json"


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


def dataset_version(folder: Path) -> dict | None:
    """The dataset version `folder` is, from its manifest: {dataset, version, parent, changes: how many}; None
    for a folder that is no dataset version (or whose manifest is unreadable: it only informs)."""
    import json

    try:
        manifest = json.loads((Path(folder) / DATASET_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("changes"), list):
        return None
    return {"dataset": manifest.get("dataset"), "version": manifest.get("version"), "parent": manifest.get("parent"),
            "changes": len(manifest["changes"])}
