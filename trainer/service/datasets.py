"""Uploaded datasets: an archive streamed to disk under a size limit, identified by its content hash (the same
archive uploaded twice is one dataset), extracted with the CLI's safe extraction and checked against a
recipe's layout before it is kept. A refused upload leaves nothing behind."""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from trainer.errors import BadInput

SUFFIXES = (".zip", ".tgz", ".tar.gz", ".tar")


class TooLarge(BadInput):
    """An upload over the service's limit (HTTP 413)."""


NAME_MAX = 255  # characters: the store's datasets.name


def check_name(filename: str) -> str:
    name = Path(filename or "").name
    if len(name) > NAME_MAX or not name.isprintable():
        raise BadInput(f"the archive's file name must be at most {NAME_MAX} printable characters (got "
                       f"{len(name)}{', with control characters' if not name.isprintable() else ''}); rename it")
    if not name.lower().endswith(SUFFIXES):
        raise BadInput(f"'{filename}' is not a .zip, .tgz, .tar.gz or .tar archive; upload the dataset as one of "
                       f"those (e.g. `zip -r photos.zip photos`)")
    return name


def refuse_links(archive: Path, filename: str) -> None:
    """A dataset from someone else holds files and folders only: a link member is refused (the CLI's
    extraction already refuses any that points outside; an upload may not have any)."""
    if filename.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zf:
                links = [i.filename for i in zf.infolist() if stat.S_ISLNK(i.external_attr >> 16)]
        except zipfile.BadZipFile as e:
            raise BadInput(f"'{filename}' could not be read as a zip archive ({e}); check the file") from None
    else:
        try:
            with tarfile.open(archive) as tf:
                links = [m.name for m in tf.getmembers() if m.issym() or m.islnk()]
        except (tarfile.TarError, EOFError, OSError) as e:
            raise BadInput(f"'{filename}' could not be read as a tar archive ({e}); check the file") from None
    if links:
        raise BadInput(f"'{filename}' holds a link ('{links[0]}'); an uploaded dataset may hold only files and "
                       f"folders: replace the link with the file it points to")


def count_classes(folder: Path, recipe: str | None = None) -> dict[str, int]:
    """Images per class of a class-folder dataset (train/ and valid/ together when it is split; the split
    folders of `recipe` when it names them, as mnist's training/ and testing/)."""
    from trainer.data.locations import IMAGE_EXTENSIONS
    from trainer.recipes import RECIPES

    rec = RECIPES.get(recipe or "")
    names = rec.splits if rec is not None and rec.check == "splits" else ("train", "valid", "test")
    splits = [folder / s for s in names if (folder / s).is_dir()] or [folder]
    counts: dict[str, int] = {}
    for split in splits:
        for klass in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
            n = sum(1 for f in klass.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if n:
                counts[klass.name] = counts.get(klass.name, 0) + n
    return counts


def add_received(store, root: Path, archive: Path, sha256: str, filename: str, recipe: str,
                 owner: str) -> tuple[dict, bool]:
    """Deduplicate, extract and check a received archive. (the dataset, whether it is new)."""
    from sqlalchemy.exc import IntegrityError

    from trainer.data.source import dataset_root, extract_members, layout_problems
    from trainer.recipes import get_recipe

    rec = get_recipe(recipe)
    dataset_id = sha256[:16]
    if (known := store.dataset(dataset_id)) is not None and Path(known["path"]).is_dir():
        problems = layout_problems(rec, Path(known["path"]))  # the same archive, perhaps for another recipe
        if problems:
            raise BadInput(f"'{filename}' (dataset {dataset_id}) is not in the '{recipe}' layout: "
                           f"{problems[0].replace(known['path'], 'the archive')}; expected {rec.layout}")
        return known, False
    refuse_links(archive, filename)
    target = root / dataset_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_id}-", dir=root))
    try:
        try:
            extract_members(archive, tmp)
        except BadInput as e:  # its line names the temporary file: name the upload instead
            raise BadInput(str(e).replace(f"--data {archive}", f"'{filename}'").replace(str(archive), filename)) \
                from None
        try:
            folder = dataset_root(rec, tmp)
        except BadInput:
            problem = layout_problems(rec, tmp)[0].replace(str(tmp), "the archive")
            raise BadInput(f"'{filename}' is not in the '{recipe}' layout: {problem}; expected {rec.layout}") \
                from None
        classes = count_classes(folder, recipe)
        inner = folder.relative_to(tmp)
        if target.exists():
            shutil.rmtree(target)  # a dataset whose row was lost: extracted again
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    values = dict(id=dataset_id, name=filename, recipe=recipe, path=str(target / inner), classes=classes,
                  images=sum(classes.values()), bytes=archive.stat().st_size, sha256=sha256, owner=owner)
    if known is not None:
        return known, False
    try:
        return store.add_dataset(**values), True
    except IntegrityError:  # the same archive, uploaded at the same moment by someone else
        return store.dataset(dataset_id), False

