"""Atomic writes: a temporary file beside the target, renamed over it, so a reader (or a kill) never sees
half a file. Every artifact trainer writes goes through here."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # mkstemp makes 0600 files; artifacts get the usual permissions


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed over `path`, else removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        kill_point(path, "written")
        os.replace(tmp, path)
        kill_point(path, "renamed")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


KILL_AT = "TRAINER_TEST_KILL_AT"  # a test hook: "<file name>:<written|renamed>:<n>"


_kill_counts: dict[str, int] = {}


def kill_point(path: Path, stage: str) -> None:
    """SIGKILL this process at the n-th time `path`'s temporary copy is written or renamed over it, when the
    test hook asks for it: a kill at an exact point of the save path, not at a moment chosen by a timer."""
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    point = f"{path.name}:{stage}"
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if wanted == f"{point}:{_kill_counts[point]}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """The temporary files of writes a kill cut short (atomic_path's .<name>.*.tmp); never the real files."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


def remove_stale_temporaries_of(path: Path) -> list[Path]:
    """The temporary files atomic_path left beside `path` when a kill cut a write of it short (.<name>.*.tmp,
    and what an exporter wrote beside such a file: .<name>.*.tmp.data)."""
    path = Path(path)
    stale = [p for pattern in (f".{path.name}.*.tmp", f".{path.name}.*.tmp.*") for p in path.parent.glob(pattern)
             if p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=100, bbox_inches="tight")
