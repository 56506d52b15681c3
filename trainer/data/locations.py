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


URL_SCHEMES = ("http://", "https://")  # --data URL: an archive downloaded once (data/source.py)


def is_url(data) -> bool:
    return isinstance(data, str) and data[:8].lower().startswith(URL_SCHEMES)


def data_root() -> Path:
    return Path(os.environ.get("TRAINER_DATA", "datasets")).expanduser()


def offline() -> bool:
    return os.environ.get("TRAINER_OFFLINE", "") not in ("", "0", "false")


def fastai_data_dir() -> Path:
    """Where fastai's untar_data extracts to, read without importing fastai."""
    return fastai_dir("data")


def fastai_archive_dir() -> Path:
    """Where fastai's untar_data downloads archives to (config.ini's `archive`), and --data URL too."""
    return fastai_dir("archive")


def fastai_dir(key: str) -> Path:
    """One of the folders of fastai's config.ini ($FASTAI_HOME, default ~/.fastai): `data`, `archive`, ..."""
    home = Path(os.environ.get("FASTAI_HOME", "~/.fastai")).expanduser()
    parser = configparser.ConfigParser()
    parser.read(home / "config.ini")
    folder = Path(parser.get("DEFAULT", key, fallback=key)).expanduser()
    return folder if folder.is_absolute() else home / folder


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
