"""The one listing of a dataset's images, for the scan and for fastai alike: what is scanned is what trains.

Links are followed once: a file is listed once however many paths reach it (by device and inode, so a
hardlink or a linked class folder counts once), a link to a folder already being listed (a loop, or a second
path to it) is not followed, and anything named like an image that is not a regular file (a FIFO, a socket, a
device, a dangling link) is unreadable and never opened. Hidden files and folders are left out, as fastai's
get_image_files does. Standard library only: the layout checks use it too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.locations import IMAGE_EXTENSIONS


@dataclass
class Listing:
    files: list[Path] = field(default_factory=list)  # regular image files, each once, sorted
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # named like images, not regular files
    not_followed: list[Path] = field(default_factory=list)  # links to folders listed already (loops, repeats)

    def warning(self) -> str | None:
        """One line naming the links not followed, or None."""
        if not self.not_followed:
            return None
        names = ", ".join(str(p) for p in self.not_followed[:5]) + (" ..." if len(self.not_followed) > 5 else "")
        return (f"not following {len(self.not_followed)} link(s) to folders listed already (a loop or a second "
                f"path to the same images): {names}")


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(root: Path, folders=None) -> Listing:
    """The images under `root` (only under its subfolders `folders` when given, plus root's own files, as
    fastai's get_image_files), as paths beginning with `root` in the form it is given."""
    listing = Listing()
    root = Path(root)
    try:
        top = os.stat(root)
    except OSError:
        return listing
    _walk(root, listing, {(top.st_dev, top.st_ino)}, set(), set(folders) if folders else None)
    listing.files.sort()
    listing.unreadable.sort()
    return listing


def _walk(folder: Path, listing: Listing, dirs: set, seen: set, only: set | None) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # an unreadable folder: fastai's os.walk skips it too
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            info = os.stat(entry.path)  # follows links
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            if only is not None and entry.name not in only:
                continue
            key = (info.st_dev, info.st_ino)
            if key in dirs:
                listing.not_followed.append(path)
                continue
            dirs.add(key)
            _walk(path, listing, dirs, seen, None)
        elif is_image_name(entry.name):
            _add_file(path, info, entry.is_symlink(), listing, seen)


def _add_file(path: Path, info, link: bool, listing: Listing, seen: set) -> None:
    if info is None:
        listing.unreadable.append((path, "dangling symbolic link" if link else "cannot be read"))
    elif not stat.S_ISREG(info.st_mode):
        listing.unreadable.append((path, f"not a regular file ({file_kind(info.st_mode)})"))
    elif (info.st_dev, info.st_ino) not in seen:
        seen.add((info.st_dev, info.st_ino))
        listing.files.append(path)


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"
