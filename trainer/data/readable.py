"""The scan's check of one image file, with PIL alone: the scan's worker processes import this module (and the
package's light __init__s), not fastai or torch, so starting them costs a fraction of a second."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


# not fastai's verify_image(s): a bool, no reason to report; a bare except (eats Ctrl-C); leaves the file open
def unreadable(path: Path) -> str | None:
    """Why `path` cannot be decoded, or None. JPEGs decode at 1/8 scale: every byte is still read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "skip it"
        return f"{type(e).__name__}: {e}"
    return None
