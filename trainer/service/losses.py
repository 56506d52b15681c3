"""A run's every-image losses and images, for the cleaning pages: losses.csv computed by `trainer interpret RUN
--losses` in a child (tasks.run_trainer: the service never loads torch), once per run at a time, in a background
thread; then read back filtered and paged. And a run's images, by the paths of its split.csv only."""

from __future__ import annotations

import threading
from pathlib import Path

from trainer.errors import BadInput
from trainer.runs import rundir

LOSSES_TIMEOUT = 4 * 3600.0  # seconds: an inference pass over a whole training set, on the CPU
COMPUTING, READY, FAILED, ABSENT = "computing", "ready", "failed", "absent"


class Losses:
    """Which runs' losses are being computed, and why the last try failed (in this process: a restarted
    service starts a failed or cut-short computation again when asked)."""

    def __init__(self, settings, run=None):
        from trainer.service.tasks import run_trainer

        self.settings, self.run = settings, run or run_trainer
        self.lock = threading.Lock()
        self.computing: set[str] = set()
        self.failed: dict[str, str] = {}
        self.cache: dict[str, tuple[tuple, list[dict]]] = {}

    def state(self, run_dir: Path, start: bool = False) -> tuple[str, str | None]:
        """(computing | ready | failed | absent, the failure's line or None); with `start`, a run with no
        losses.csv and nothing computing it starts computing (a failed one tries again)."""
        key = str(run_dir)
        with self.lock:
            if key in self.computing:
                return COMPUTING, None
            if (run_dir / rundir.LOSSES).is_file():
                return READY, None
            if not start:
                return (FAILED, self.failed[key]) if key in self.failed else (ABSENT, None)
            self.computing.add(key)
            self.failed.pop(key, None)
        threading.Thread(target=self._compute, args=(run_dir,), name=f"losses-{run_dir.name}", daemon=True).start()
        return COMPUTING, None

    def start(self, run_dir: Path) -> tuple[str, str | None]:
        """Start computing losses.csv unless it is there or being computed; the state then."""
        return self.state(run_dir, start=True)

    def _compute(self, run_dir: Path) -> None:
        error = None
        try:
            self.run(["interpret", str(run_dir), "--losses"], self.settings, timeout=LOSSES_TIMEOUT, device="cpu")
            if not (run_dir / rundir.LOSSES).is_file():
                error = "`trainer interpret --losses` ended without writing losses.csv"
        except BadInput as e:  # TaskFailed: the command's own line
            error = str(e)
        except Exception as e:  # noqa: BLE001 - kept as the state's one line
            error = f"{type(e).__name__}: {e}"
        with self.lock:
            self.computing.discard(str(run_dir))
            if error is not None:
                self.failed[str(run_dir)] = " ".join(error.split())[:500]

    def rows(self, run_dir: Path) -> list[dict]:
        """losses.csv's rows, highest loss first (read once per version of the file)."""
        key, path = str(run_dir), run_dir / rundir.LOSSES
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self.lock:
            cached = self.cache.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        rows = rundir.read_losses(run_dir) or []
        with self.lock:
            if len(self.cache) >= 8:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = (stamp, rows)
        return rows


def run_classes(run_dir: Path) -> list[str]:
    config, _ = rundir.read_json(run_dir / rundir.CONFIG)
    classes = ((config or {}).get("data") or {}).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else []


_splits: dict[str, tuple[tuple, frozenset]] = {}
_splits_lock = threading.Lock()


def split_paths(run_dir: Path) -> frozenset:
    """The paths split.csv lists (read once per version of the file)."""
    from trainer.runs.split import read_split

    path = run_dir / rundir.SPLIT
    try:
        stat = path.stat()
    except OSError:
        return frozenset()
    stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    with _splits_lock:
        cached = _splits.get(str(run_dir))
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        paths = frozenset(p for _, p, _ in read_split(run_dir) or [])
    except (BadInput, OSError, ValueError):
        paths = frozenset()
    with _splits_lock:
        if len(_splits) >= 16:
            _splits.pop(next(iter(_splits)))
        _splits[str(run_dir)] = (stamp, paths)
    return paths


def run_data_path(run_dir: Path) -> Path | None:
    """The folder the run trained on (config.json's data.path), or None when config.json does not say."""
    config, _ = rundir.read_json(run_dir / rundir.CONFIG)
    data = ((config or {}).get("data") or {}).get("path")
    return Path(data) if isinstance(data, str) else None


def file_inside(folder: Path, rel: str) -> Path | None:
    """The file `rel` names under `folder`, if it stays inside it once links are resolved; else None."""
    if Path(rel).is_absolute():
        return None
    root = folder.resolve()
    found = (root / rel).resolve()
    return found if found.is_relative_to(root) and found.is_file() else None


def run_image(run_dir: Path | None, rel: str) -> Path | None:
    """The image file `rel` names, when it is a row of the run's split.csv and, under the run's data folder
    (config.json's data.path), stays inside it; None for anything else."""
    if run_dir is None or not rel or rel not in split_paths(run_dir):
        return None
    data = run_data_path(run_dir)
    return file_inside(data, rel) if data is not None else None
