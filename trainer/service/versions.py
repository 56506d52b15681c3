"""Dataset versions: a dataset cleaned by relabelling and deleting images (fastai's ImageClassifierCleaner, as a
service), without ever changing the originals.

A version is its parent version plus a recorded list of changes, each {"path": REL, "action": "relabel", "to":
CLASS} or {"path": REL, "action": "delete"} (REL as split.csv and losses.csv write it: under the dataset folder).
Version 1 is the dataset itself (its `datasets` row); version N (the `dataset_versions` table) is materialised as
STATE/datasets/<id>/.versions/<N>/: every file of the parent's folder hard-linked (copied where a link cannot be
made), a relabelled image moved to <its split folder>/<new class>/<name>, a deleted one left out, and the
manifest DATASET_MANIFEST (a dotfile: no listing takes it for an image) that `trainer fit` records in
config.json. A version is built in a temporary sibling folder and renamed into place, so a crash leaves no half
version; every change is checked before anything is written.

`.versions` is hidden because an uploaded dataset whose archive held its class folders at the top *is*
STATE/datasets/<id>/: a visible `versions/` there would be listed as one more class of the original.

A job on a folder under the data root (not an upload) can be cleaned too: its first saved version registers
that folder as a dataset (its id from its resolved path). Only layouts whose label is the image's folder can be
cleaned (CLEANABLE); the pets recipes label by file name. No torch here: the service never loads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from trainer.data.listing import list_images
from trainer.data.locations import DATASET_MANIFEST, IMAGE_EXTENSIONS
from trainer.service.losses import file_inside
from trainer.errors import BadInput

# The recipes whose label is the image's parent folder (fastai's parent_label), checked in trainer/recipes.py
CLEANABLE = ("folder", "mnist", "mnist_sample", "cifar10", "digits")
MAX_CHANGES = 100_000
MAX_NOTE = 1000
ACTIONS = ("relabel", "delete")


class Refusal(BadInput):
    """A cleaning request refused: one line, with its HTTP status."""

    status = 422

    def __init__(self, line: str, status: int | None = None):
        super().__init__(line)
        if status is not None:
            self.status = status


def versions_folder(settings, dataset_id: str) -> Path:
    return settings.state / "datasets" / dataset_id / ".versions"


def folder_id(folder: Path) -> str:
    """A data-root folder's dataset id: stable for its resolved path, 16 hex digits like an upload's."""
    return hashlib.sha256(f"folder:{Path(folder).resolve()}".encode()).hexdigest()[:16]


def check_cleanable(recipe: str) -> None:
    if recipe not in CLEANABLE:
        raise Refusal(f"recipe {recipe} does not take an image's label from its folder: its data cannot be cleaned "
                      f"here (cleaning takes the layouts of {', '.join(CLEANABLE)})")


# --- where a job's data is ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The dataset version a job trained on: an uploaded or registered dataset's (id, version), or a data-root
    folder not registered yet (`folder`; version 1)."""

    dataset: str
    version: int
    folder: Path | None = None


def job_source(store, job: dict, settings) -> Source:
    if job["dataset"]:
        return Source(job["dataset"], job.get("dataset_version") or 1)
    folder = job_folder(job, settings)
    dataset_id = folder_id(folder)
    return Source(dataset_id, 1, None if store.dataset(dataset_id) is not None else folder)


def job_folder(job: dict, settings) -> Path:
    """The data-root folder a job trained on: its run's config.json data.path (the dataset folder the recipe
    found), else the folder it named."""
    from trainer.runs import rundir

    config, _ = rundir.read_json(Path(job["run_dir"]) / rundir.CONFIG) if job["run_dir"] else (None, None)
    path = (config or {}).get("data", {}).get("path") if isinstance((config or {}).get("data"), dict) else None
    if isinstance(path, str):
        folder = Path(path)
    elif job["data"]:
        from trainer.data.source import dataset_root
        from trainer.recipes import get_recipe

        try:
            folder = dataset_root(get_recipe(job["recipe"]), Path(job["data"]))
        except (BadInput, OSError):
            folder = Path(job["data"])
    else:
        raise Refusal(f"job {job['id']} has not started: where the recipe's own data is is not known yet; wait for "
                      f"it to start", 409)
    folder, root = folder.resolve(), settings.data_root.resolve()
    if folder == root or not folder.is_relative_to(root):
        raise Refusal(f"job {job['id']}'s data is not under the service's data root (nor an uploaded dataset): only "
                      f"those can be cleaned", 409)
    if not folder.is_dir():
        raise Refusal(f"job {job['id']}'s data folder {folder.relative_to(root)} is gone from the data root", 409)
    return folder


def folder_dataset(folder: Path, recipe: str, owner: str) -> dict:
    """The `datasets` row that registers a data-root folder (classes counted like an upload's)."""
    from trainer.service.datasets import count_classes

    check_cleanable(recipe)
    classes = count_classes(folder, recipe)
    size = sum(f.stat().st_size for f in list_images(folder).files)
    return dict(id=folder_id(folder), name=folder.name, recipe=recipe, path=str(folder), classes=classes,
                images=sum(classes.values()), bytes=size,
                sha256=hashlib.sha256(f"folder:{folder}".encode()).hexdigest(), owner=owner)


def register(store, values: dict) -> dict:
    from sqlalchemy.exc import IntegrityError

    try:
        return store.add_dataset(**values)
    except IntegrityError:  # registered meanwhile, by another request
        return store.dataset(values["id"])


# --- changes ---------------------------------------------------------------------------------------------


def image_paths(folder: Path) -> set[str]:
    """The images of a dataset folder as split.csv names them (relative, POSIX), as training lists them."""
    return {f.relative_to(folder).as_posix() for f in list_images(folder).files}


def check_changes(changes, images: set[str], classes: list[str], what: str) -> tuple[list[dict], dict]:
    """(the changes as recorded, {path: where it goes, None when deleted}); a Refusal naming the first bad one.
    `images`: the parent version's paths; `classes`: the classes an image may be relabelled to."""
    shape = ('a list of {"path": P, "action": "relabel", "to": CLASS} and {"path": P, "action": "delete"}, P as '
             'split.csv and losses.csv write it')
    if not isinstance(changes, list) or not changes:
        raise Refusal(f"changes must be a non-empty list: {shape}")
    if len(changes) > MAX_CHANGES:
        raise Refusal(f"{len(changes)} changes in one version; at most {MAX_CHANGES}")
    recorded, moves, arriving = [], {}, {}
    for i, change in enumerate(changes):
        where = f"changes[{i}]"
        if not isinstance(change, dict):
            raise Refusal(f"{where} must be an object: {shape}")
        unknown = sorted(set(change) - {"path", "action", "to"})
        if unknown:
            raise Refusal(f"{where}: unknown field '{unknown[0]}'; a change has path, action and (to relabel) to")
        path, action = change.get("path"), change.get("action")
        if not isinstance(path, str) or not path:
            raise Refusal(f"{where}: path must be an image's path as split.csv writes it, e.g. train/3/1.png")
        if path in moves:
            raise Refusal(f"{where}: '{path}' is changed twice; give each image once")
        if path not in images:
            raise Refusal(f"{where}: '{path}' is not an image of {what} (paths as the run's split.csv and losses.csv "
                          f"write them)")
        here = PurePosixPath(path)
        if action == "delete":
            if change.get("to") is not None:
                raise Refusal(f"{where}: a delete takes no 'to'")
            moves[path] = None
            recorded.append({"path": path, "action": "delete"})
        elif action == "relabel":
            to = change.get("to")
            if not isinstance(to, str) or to not in classes:
                raise Refusal(f"{where}: 'to' must be one of the dataset's classes ({', '.join(classes)}), got "
                              f"{to!r}")
            if str(here.parent) == ".":
                raise Refusal(f"{where}: '{path}' is in no class folder, so it has no label to change")
            if to == here.parent.name:
                raise Refusal(f"{where}: '{path}' is labelled {to} already")
            target = (here.parent.parent / to / here.name).as_posix()
            if target in images or target in arriving:
                raise Refusal(f"{where}: relabelled to {to}, '{path}' would be '{target}', which is another image's "
                              f"name; delete one of the two")
            moves[path] = arriving[target] = target
            recorded.append({"path": path, "action": "relabel", "to": to})
        else:
            raise Refusal(f"{where}: action must be relabel or delete, got {action!r}")
    return recorded, moves


def materialise(parent: Path, into: Path, moves: dict, manifest: dict) -> None:
    """Fill the new folder `into` from the parent version's folder: every file hard-linked (copied where a link
    cannot be made, e.g. across file systems) at its own path or where `moves` sends it, none where it sends
    None. Hidden files and folders are not the dataset's (the parent's own manifest, an upload's .versions)."""
    from trainer.files import write_json

    seen = set()
    for where, folders, names in os.walk(parent, followlinks=True):  # a linked class folder is the dataset's too
        info = os.stat(where)
        if (info.st_dev, info.st_ino) in seen:  # a loop, or a second path to one folder
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        here = Path(where).relative_to(parent)
        for name in sorted(names):
            if name.startswith("."):
                continue
            rel = (here / name).as_posix()
            target = moves.get(rel, rel)
            if target is None:
                continue
            source, out = Path(where) / name, into / target
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, out)
            except OSError:
                if not source.exists():  # a dangling link: no file to keep
                    continue
                shutil.copy2(source, out)
    write_json(into / DATASET_MANIFEST, manifest)


def save_version(store, settings, source: Source, recipe: str, parent_version: int | None, changes, note,
                 owner: str) -> dict:
    """Check `changes` against the parent version, materialise the new version and record it; the new version.
    `source.folder`: a data-root folder registered (under `recipe`) only once the version is sure to be made."""
    from trainer.data.source import exclusive, layout_problems
    from trainer.recipes import get_recipe
    from trainer.service.datasets import count_classes

    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise Refusal(f"note must be text of at most {MAX_NOTE} characters")
    if parent_version is not None and (not isinstance(parent_version, int) or isinstance(parent_version, bool)):
        raise Refusal(f"parent must be a version number, got {parent_version!r}")
    with exclusive(f"dataset-{source.dataset}"):  # one new version of a dataset at a time on this machine
        values = None
        if source.folder is not None and store.dataset(source.dataset) is None:
            values = folder_dataset(source.folder, recipe, owner)
            first = {"path": values["path"], "classes": values["classes"]}
            parent, parent_version = first, 1
        else:
            first = store.version(source.dataset, 1)
            if first is None:
                raise Refusal(f"no dataset '{source.dataset}'; GET /datasets lists them", 404)
            recipe = store.dataset(source.dataset)["recipe"]
            check_cleanable(recipe)
            parent_version = store.latest_version(source.dataset) if parent_version is None else parent_version
            parent = store.version(source.dataset, parent_version)
            if parent is None:
                raise Refusal(f"dataset {source.dataset} has no version {parent_version}; GET /datasets/"
                              f"{source.dataset}/versions lists them")
        folder = Path(parent["path"])
        if not folder.is_dir():
            raise Refusal(f"version {parent_version} of dataset {source.dataset} is gone from disk", 409)
        classes = sorted(set(first["classes"]) | set(parent["classes"]))
        recorded, moves = check_changes(changes, image_paths(folder), classes,
                                        f"version {parent_version} of dataset {source.dataset}")
        number = store.latest_version(source.dataset) + 1
        root = versions_folder(settings, source.dataset)
        root.mkdir(parents=True, exist_ok=True)
        target = root / str(number)
        name = values["name"] if values else store.dataset(source.dataset)["name"]
        manifest = {"dataset": source.dataset, "name": name, "version": number, "parent": parent_version,
                    "changes": recorded}
        tmp = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=root))
        try:
            materialise(folder, tmp, moves, manifest)
            problems = layout_problems(get_recipe(recipe), tmp)
            if problems:
                raise Refusal(f"with these changes version {number} would not fit recipe {recipe}: "
                              f"{problems[0].replace(str(tmp), 'it')}; change fewer images")
            counted = count_classes(tmp, recipe)
            if values is not None:
                register(store, values)
            if target.exists():  # left by a crash between the rename and the row, earlier: no row names it
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            return store.add_version(source.dataset, number, parent_version, recorded, str(target), counted, owner,
                                     note)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise


# --- what the API shows --------------------------------------------------------------------------------------


def summary(version: dict) -> dict:
    return {"version": version["version"], "parent": version["parent"], "images": version["images"],
            "classes": version["classes"], "changes": len(version["changes"]), "created_at": version["created_at"],
            "owner": version["owner"], "note": version["note"]}


def detail(store, version: dict) -> dict:
    parent = store.version(version["dataset_id"], version["parent"]) if version["parent"] else None
    before = parent["classes"] if parent else version["classes"]
    now = version["classes"]
    return {"dataset": version["dataset_id"], "version": version["version"], "parent": version["parent"],
            "images": version["images"], "classes": now, "changes": version["changes"],
            "class_changes": {c: now.get(c, 0) - before.get(c, 0) for c in sorted(set(now) | set(before))},
            "note": version["note"], "created_at": version["created_at"], "owner": version["owner"]}


def image_file(folder: Path, rel: str) -> Path | None:
    """The image `rel` of a version's folder; None for anything else (a hidden file, `..`, an absolute path, a
    file that is not an image, a link out of the folder)."""
    parts = PurePosixPath(rel).parts if rel else ()
    if not parts or PurePosixPath(rel).is_absolute() or "\\" in rel or any(p.startswith(".") for p in parts):
        return None
    if PurePosixPath(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return file_inside(folder, rel)


@lru_cache(maxsize=16)
def _frozen_listing(path: str) -> tuple[str, ...]:
    return tuple(sorted(image_paths(Path(path))))


def samples(version: dict, per_class: int) -> dict[str, list[str]]:
    """Up to `per_class` images of each class of a version, the same ones each time (by a hash of their paths):
    {class: [paths]}."""
    folder = Path(version["path"])
    paths = _frozen_listing(str(folder)) if version["version"] > 1 else sorted(image_paths(folder))  # N > 1: fixed
    by_class: dict[str, list[str]] = {c: [] for c in version["classes"]}
    for path in paths:
        label = PurePosixPath(path).parent.name
        if label in by_class:
            by_class[label].append(path)
    order = lambda p: hashlib.sha1(p.encode()).hexdigest()  # noqa: E731
    return {c: sorted(found, key=order)[:per_class] for c, found in by_class.items()}
