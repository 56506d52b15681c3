"""Extracting a --data archive within limits, so a decompression bomb is refused before anything is kept.

Limits come from the environment, as TRAINER_DATA does: extraction happens wherever --data is resolved
(fit, lr-find, download, the Python API), and a limit is the machine's policy rather than one run's option.
  TRAINER_MAX_EXTRACT_RATIO    extracted bytes at most this multiple of the archive's size (default 100)
  TRAINER_MAX_EXTRACT_BYTES    and at most this many bytes (default 20 GiB)
  TRAINER_MAX_EXTRACT_MEMBERS  and at most this many members (default 2,000,000)
The members' declared sizes are checked first; the bytes written are counted too, as headers can lie.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import BadInput

DEFAULTS = {"TRAINER_MAX_EXTRACT_RATIO": 100.0, "TRAINER_MAX_EXTRACT_BYTES": 20 * 2**30,
            "TRAINER_MAX_EXTRACT_MEMBERS": 2_000_000}


def setting(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise BadInput(f"{name} must be a positive number, got '{raw}'")
    return value


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


@dataclass
class Budget:
    """What `archive` may extract to, and what it has so far."""

    archive: Path
    max_bytes: float
    max_members: float
    why: str  # which limit max_bytes is
    written: int = 0

    @classmethod
    def of(cls, archive: Path) -> "Budget":
        ratio, cap = setting("TRAINER_MAX_EXTRACT_RATIO"), setting("TRAINER_MAX_EXTRACT_BYTES")
        by_ratio = ratio * archive.stat().st_size
        why = (f"TRAINER_MAX_EXTRACT_RATIO: {ratio:g}x the archive's {size_text(archive.stat().st_size)}"
               if by_ratio < cap else f"TRAINER_MAX_EXTRACT_BYTES: {size_text(cap)}")
        return cls(archive, min(by_ratio, cap), setting("TRAINER_MAX_EXTRACT_MEMBERS"), why)

    def refuse(self, what: str) -> BadInput:
        return BadInput(f"--data {self.archive}: refusing to extract an archive that {what}; raise the limit if you "
                        f"trust it, or extract it yourself and pass the folder")

    def check_declared(self, members: int, declared: int) -> None:
        if members > self.max_members:
            raise self.refuse(f"holds {members} members (TRAINER_MAX_EXTRACT_MEMBERS: {self.max_members:.0f})")
        if declared > self.max_bytes:
            raise self.refuse(f"declares {size_text(declared)} of contents (over {self.why})")

    def add(self, extracted: Path) -> None:
        if extracted.is_file() and not extracted.is_symlink():
            self.written += extracted.stat().st_size
        if self.written > self.max_bytes:
            raise self.refuse(f"extracts to more than {size_text(self.max_bytes)} (over {self.why})")


def extract_zip(archive: Path, into: Path, refuse_outside) -> None:
    budget = Budget.of(archive)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        refuse_outside(archive, [i.filename for i in infos])
        budget.check_declared(len(infos), sum(i.file_size for i in infos))
        for info in infos:
            budget.add(Path(zf.extract(info, into)))


def extract_tar(archive: Path, into: Path, refuse_outside) -> None:
    budget = Budget.of(archive)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()  # reads every header (a compressed archive is decompressed once, not kept)
        refuse_outside(archive, [m.name for m in members])
        budget.check_declared(len(members), sum(m.size for m in members if m.isfile()))
        for member in members:
            tf.extract(member, into, filter="data")  # PEP 706 also stops links and devices that point outside
            budget.add(into / member.name)
