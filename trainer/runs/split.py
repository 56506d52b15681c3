"""A run's train/valid split as a file: split.csv beside config.json.

Each row is one image: its split (train or valid), its path relative to the dataset root and its
label. fit writes it; --resume, interpret and export rebuild the split from the recipe (a sorted
file list, so the same files give the same split on any copy of the data) and refuse, rather
than silently score on training images, data whose split no longer matches the file. evaluate
refuses a test set that holds the run's training images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from trainer.errors import BadInput

from trainer.runs.rundir import SPLIT as SPLIT_FILE
HEADER = ["split", "path", "label"]


def split_rows(dls, root: Path, delim: str | None = None) -> list[tuple[str, str, str]]:
    """(split, path under the dataset root, label) for every item of `dls`, sorted; a multi-label image's
    labels joined by `delim` (the run's --label-delim), in the vocab's order."""
    from trainer.data.loaders import labels_of

    rows = []
    for split, ds in (("train", dls.train_ds), ("valid", dls.valid_ds)):
        for item, label in zip(ds.items, labels_of(ds)):
            text = str(dls.vocab[label]) if isinstance(label, int) else \
                (delim or " ").join(str(dls.vocab[i]) for i in label)
            rows.append((split, relative(Path(item), root), text))
    return sorted(rows)


def relative(item: Path, root: Path) -> str:
    return (item.relative_to(root) if item.is_relative_to(root) else item).as_posix()


def split_sha256(rows: list[tuple[str, str, str]]) -> str:
    """A fingerprint of the split: two runs with the same one used the same files with the same labels,
    wherever the dataset was stored."""
    return hashlib.sha256("\n".join("\t".join(row) for row in sorted(rows)).encode()).hexdigest()


def write_split(run_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    from trainer.files import write_csv

    write_csv(run_dir / SPLIT_FILE, HEADER, rows)


def read_split(run_dir: Path) -> list[tuple[str, str, str]] | None:
    """The recorded split, or None for a run from before split.csv was written."""
    import csv

    try:
        with open(run_dir / SPLIT_FILE, newline="") as f:
            header, *rows = list(csv.reader(f))
    except FileNotFoundError:
        return None
    if header != HEADER:
        raise BadInput(f"{run_dir / SPLIT_FILE} is not a split file (header {header}); it belongs to the run: "
                       f"restore it from a copy of the run")
    return [tuple(row) for row in rows]


def check_split(run_dir: Path, config: dict, dls, root: Path) -> None:
    """Refuse (BadInput) when the split rebuilt from the data at `root` is not the run's recorded one."""
    rebuilt = split_rows(dls, root, (config.get("options") or {}).get("label_delim"))
    recorded = read_split(run_dir)
    fix = ("pass --data with the dataset the run was trained on, or train a new run on this data")
    if recorded is None:  # an older run: only the fingerprint in config.json
        expected = config.get("data", {}).get("split_sha256")
        if expected and expected != split_sha256(rebuilt):
            raise BadInput(f"{root} does not give the run's train/valid split (its split_sha256 differs); {fix}")
        return
    differ = differences(recorded, rebuilt)
    if differ:
        raise BadInput(f"{root} no longer matches the run's split ({run_dir / SPLIT_FILE}): {differ}; "
                       f"its validation set would not be the run's: {fix}")


def differences(recorded: list, rebuilt: list) -> str:
    """'2 of the run's 400 images missing, 3 new, 1 with another split or label (e.g. valid/3/a.png)', or ''."""
    before = {path: (split, label) for split, path, label in recorded}
    now = {path: (split, label) for split, path, label in rebuilt}
    missing = sorted(before.keys() - now.keys())
    new = sorted(now.keys() - before.keys())
    changed = sorted(p for p in before.keys() & now.keys() if before[p] != now[p])
    if not (missing or new or changed):
        return ""
    parts = [f"{len(missing)} of the run's {len(before)} images missing" if missing else "",
             f"{len(new)} new" if new else "", f"{len(changed)} with another split or label" if changed else ""]
    example = (missing or new or changed)[0]
    return f"{', '.join(p for p in parts if p)} (e.g. {example})"


def training_images(run_dir: Path, root: Path) -> set[Path]:
    """The absolute paths of the run's training images, as they were under `root` (empty for older runs)."""
    return {(root / path).resolve() for split, path, _ in (read_split(run_dir) or []) if split == "train"}
