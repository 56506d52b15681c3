"""Atomic writes: a temporary file beside the target, renamed over it, so a reader (or a kill) never sees
half a file. Every artifact trainer writes goes through here, so here a failed write (a full disk, a read-only
filesystem, no permission, a name too long) becomes one line naming the file (errors.CannotWrite), and the
target keeps its previous, whole content."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path

from trainer.errors import CannotWrite


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # mkstemp makes 0600 files; artifacts get the usual permissions


@contextlib.contextmanager
def atomic_path(path: Path, digest: bool = False):
    """Yield a temporary path beside `path`; on success it is renamed over `path`, else removed. A write that
    fails for want of space, permission or a shorter name raises CannotWrite; `path` is left as it was.
    `digest`: its sha256 is recorded in the sidecar PATH.sha256 (write_digests), checked by verify_digest."""
    path = Path(path)
    try:  # the name cut short: a target near the 255-byte limit still gets a temporary beside it
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (write_failure(path, e) or e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        new = sha256_of(Path(tmp)) if digest else None
        if digest:  # before the rename: whichever file a kill leaves at `path`, the sidecar lists it
            write_digests(path, [new, *[h for h in digests_or_none(path) if h != new]])
        kill_point(path, "written")
        os.replace(tmp, path)
        kill_point(path, "renamed")
    except BaseException as e:
        failure = write_failure(path, e)  # before the temporary is removed: the disk is still as full
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if failure is None:
            raise
        raise failure from None
    if digest:  # renamed: only the new file can be there now
        write_digests(path, [new])


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def free_bytes(folder: Path) -> int | None:
    """The bytes this process may still write where `folder` is (root may use the reserved blocks)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return (st.f_bfree if root else st.f_bavail) * st.f_frsize


def cannot_write(path: Path, code: int) -> CannotWrite:
    """'cannot write PATH: no space left on device (3 MB free)', and the like for each errno."""
    what = os.strerror(code)
    what = what[0].lower() + what[1:]
    if code in (errno.ENOSPC, errno.EDQUOT) and (free := free_bytes(Path(path).parent)) is not None:
        what += f" ({free / 2**20:.0f} MB free)"
    return CannotWrite(f"cannot write {path}: {what}", path, code)


def write_failure(path: Path, error: BaseException) -> CannotWrite | None:
    """The CannotWrite that an error raised while writing `path` stands for, or None (a bug, Ctrl-C): an OSError
    of WRITE_ERRORS, or a library's own error on a full disk (torch.save's "unexpected pos", safetensors' "os
    error 28"), recognised by its text or by less than 1 MiB left where it wrote."""
    if isinstance(error, CannotWrite) or not isinstance(error, Exception):
        return error if isinstance(error, CannotWrite) else None
    if isinstance(error, OSError):
        return cannot_write(path, error.errno) if error.errno in WRITE_ERRORS else None
    free = free_bytes(Path(path).parent)
    if "No space left" in str(error) or "os error 28" in str(error) or (free is not None and free < 2**20):
        return cannot_write(path, errno.ENOSPC)
    return None


# Content hashes of the files a run must not load damaged (last.pth, best.pth, model.safetensors): PATH.sha256
# lists, in sha256sum's format, the hash of the file and, while a write is under way, of the one it replaces.
DIGEST_SUFFIX = ".sha256"


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_digests(path: Path, hashes: list[str]) -> None:
    write_text(digest_path(path), "".join(f"{h}  {path.name}\n" for h in hashes))


def recorded_digests(path: Path) -> list[str] | None:
    """The hashes PATH.sha256 accepts; None when there is none (a run from before hashes were recorded)."""
    try:
        text = digest_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        text = ""
    hashes = [line.split()[0] for line in text.splitlines() if line.split()]
    if not hashes or any(len(h) != 64 or set(h) - set("0123456789abcdef") for h in hashes):
        from trainer.errors import BadInput

        raise BadInput(f"{digest_path(path)} is damaged (expected lines of '<sha256>  {path.name}'): restore it, "
                       f"or delete it to load {path.name} unchecked")
    return hashes


def digests_or_none(path: Path) -> list[str]:
    try:
        return recorded_digests(path) or []
    except Exception:  # a damaged sidecar: the write replaces it
        return []


def verify_digest(path: Path) -> None:
    """Refuse `path` when its content is not what was written (a recorded hash that does not match)."""
    hashes = recorded_digests(path)
    if hashes is not None and sha256_of(path) not in hashes:
        from trainer.errors import BadInput

        raise BadInput(f"{path} is damaged since it was written (sha256 mismatch): restore it or retrain")


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
