"""The folder recipe's other labellings: a CSV of file names and labels (--labels, fastai's from_df), or a
regular expression on each file name (--label-re, fastai's from_name_re).

Each is checked before fastai sees it, so a missing file, a repeated row, an empty label or a name the pattern
does not match is one line naming the row or the file, not a KeyError in the middle of the first batch.
No heavy imports: the layout check reads this.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.locations import IMAGE_EXTENSIONS
from trainer.errors import BadInput

TRUE = ("1", "true", "yes", "y", "t", "valid")
FALSE = ("0", "false", "no", "n", "f", "train", "")


@dataclass(frozen=True)
class Row:
    line: int  # the CSV's line number (the header is line 1)
    path: Path  # the image: --data / the row's file name
    labels: tuple[str, ...]  # one label, or an image's labels (multi-label)
    valid: bool = False


@dataclass
class LabelTable:
    file: Path
    rows: list[Row] = field(default_factory=list)
    has_valid: bool = False  # a validation column decides the split

    def check_vocab(self, train_rows: list[Row], valid_rows: list[Row]) -> None:
        """fastai's vocab comes from the training images: a validation label it never trains on is refused."""
        trained = {label for row in train_rows for label in row.labels}
        for row in valid_rows:
            unseen = [label for label in row.labels if label not in trained]
            if unseen:
                raise BadInput(f"{self.file} line {row.line}: label '{unseen[0]}' of validation image "
                               f"{row.path.name} is on no training image (the model cannot learn a label it never "
                               f"trains on): add training images of it, or drop the row")


def labels_path(given: str, root: Path) -> Path:
    """The --labels CSV: absolute as given, else under --data, else relative to the current folder."""
    path = Path(given).expanduser()
    for candidate in ([path] if path.is_absolute() else [root / path, path]):
        if candidate.is_file():
            return candidate
    raise BadInput(f"--labels {given}: no such file under {root} or here; give the CSV of file names and labels "
                   f"(e.g. --labels labels.csv beside the images)")


def column(header: list[str], spec: str | None, default: int | None, flag: str, file: Path) -> int | None:
    """The index of a column given by header name or 0-based index (fastai's fn_col/label_col)."""
    if spec is None:
        if default is not None and default >= len(header):
            raise BadInput(f"{file} has {len(header)} column(s) ({', '.join(header)}): it needs a file-name column "
                           f"and a label column (a header row first, e.g. fname,label)")
        return default
    if spec in header:
        return header.index(spec)
    if spec.isdigit() and int(spec) < len(header):
        return int(spec)
    raise BadInput(f"{flag} '{spec}' is not a column of {file} (its columns: {', '.join(header)}); give one of "
                   f"them, by name or 0-based index")


def read_labels(root: Path, cfg, skip=frozenset(), split: bool = True) -> LabelTable:
    """The --labels CSV, every row checked: each names one readable image under --data once, with a label
    (with --label-delim: one or more); rows of unreadable images (already reported) are left out.
    `split`: read the validation column (is_valid, --valid-col); a test set (evaluate) has none."""
    file = labels_path(cfg.labels, root)
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadInput(f"--labels {file} could not be read as CSV ({type(e).__name__}: {e}); give a UTF-8 CSV of "
                       f"file names and labels") from None
    if not lines:
        raise BadInput(f"--labels {file} is empty; it needs a header row and one row per image")
    header = [h.strip() for h in lines[0]]
    fn = column(header, cfg.fn_col, 0, "--fn-col", file)
    lc = column(header, cfg.label_col, 1, "--label-col", file)
    if fn == lc:
        raise BadInput(f"--fn-col and --label-col both name column '{header[fn]}' of {file}: give two columns")
    vc = column(header, cfg.valid_col, None, "--valid-col", file) if split else None
    if split and vc is None and cfg.valid_col is None and cfg.valid_pct is None and "is_valid" in header:
        vc = header.index("is_valid")
    table = LabelTable(file, has_valid=vc is not None)
    base = root.resolve()
    seen: dict[Path, int] = {}
    for line, row in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        where = f"{file} line {line}"
        if len(row) < len(header):
            raise BadInput(f"{where} has {len(row)} column(s), the header {len(header)}: give every column")
        name = row[fn].strip()
        if not name:
            raise BadInput(f"{where}: no file name in column '{header[fn]}'")
        path = root / name
        resolved = path.resolve()
        if not resolved.is_relative_to(base):
            raise BadInput(f"{where}: {name} is outside --data {root}; file names are relative to --data")
        if not resolved.is_file():
            raise BadInput(f"{where}: no file {name} under {root}; fix the name, add the image, or drop the row")
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise BadInput(f"{where}: {name} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS)[:4])}, ...)")
        if resolved in seen:
            raise BadInput(f"{where} repeats {name} (first on line {seen[resolved]}): one row per image"
                           + ("; put several labels in one cell, separated by --label-delim" if cfg.label_delim
                              is not None else ""))
        seen[resolved] = line
        cell = row[lc].strip()
        labels = [part.strip() for part in cell.split(cfg.label_delim)] if cfg.label_delim is not None else [cell]
        labels = list(dict.fromkeys(label for label in labels if label))
        if not labels:
            raise BadInput(f"{where}: {name} has no label in column '{header[lc]}'; label it, or drop the row")
        valid = False
        if vc is not None:
            value = row[vc].strip().lower()
            if value not in TRUE + FALSE:
                raise BadInput(f"{where}: '{row[vc]}' in column '{header[vc]}' is not true or false (1/0, "
                               f"True/False, yes/no)")
            valid = value in TRUE
        if path in skip or resolved in skip:
            continue  # unreadable: reported by the scan, left out like every other recipe's
        table.rows.append(Row(line, path, tuple(labels), valid))
    if not table.rows:
        raise BadInput(f"--labels {file} lists no readable image; add a row per image (file name, label)")
    if table.has_valid and (all(r.valid for r in table.rows) or not any(r.valid for r in table.rows)):
        which = "every" if table.rows[0].valid else "no"
        raise BadInput(f"column '{header[vc]}' of {file} marks {which} image as validation; mark some (true) and "
                       f"leave the others for training (false)")
    return table


def check_names(files, pattern: str, root: Path) -> None:
    """Every file name must give --label-re a first group (fastai's RegexLabeller searches the name)."""
    matcher = re.compile(pattern)
    unmatched = []
    for f in files:
        found = matcher.search(Path(f).name)
        if not found or not found.group(1):
            unmatched.append(Path(f))
    if not files:
        raise BadInput(f"no images under {root}; --label-re labels the images under --data by their names")
    if unmatched:
        first = unmatched[0]
        more = f" (nor do {len(unmatched) - 1} more of the {len(files)} files)" if len(unmatched) > 1 else ""
        raise BadInput(f"--label-re '{pattern}' gives no label for {first.relative_to(root) if first.is_relative_to(root) else first}"
                       f"{more}: its first group must match part of each file name; fix the pattern, or move the "
                       f"file out of --data")


def layout_problems(path: Path, labels_file: str | None) -> list[str]:
    """The layout of a --labels or --label-re dataset: the CSV (relative: under `path`) and images under `path`."""
    from trainer.data.listing import list_images

    if labels_file is not None and not Path(labels_file).expanduser().is_absolute():
        if not (path / labels_file).is_file() and not Path(labels_file).is_file():
            return [f"no {labels_file} in {path}"]
    if not list_images(path).files:
        return [f"{path} holds no images"]
    return []
