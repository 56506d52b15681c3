"""Nothing lost: a checkpoint after every epoch, a clean stop on SIGINT/SIGTERM, and --resume.

After each epoch, atomically: last.pth (model and optimizer, what --resume loads), best.pth
(the weights of the best epoch by the recipe's main metric) and checkpoint.json (how far
training got). A signal only sets a flag; training stops at the next batch boundary, never
inside a write, so the last checkpoint is always whole. SIGKILL cannot be caught, and needs
nothing: the last completed epoch's files are already in place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import save_model

from trainer import runs
from trainer.progress import ConsoleProgress, RunLog


class Interrupted(BaseException):
    """Training stopped by a signal (a BaseException, like KeyboardInterrupt, so crash handling lets it by)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Checkpoints(Callback):
    order = ConsoleProgress.order + 1  # after RunLog wrote the epoch's row

    def __init__(self, run_dir: Path, run_log: RunLog, main_metric: str, best: dict | None = None):
        self.run_dir, self.run_log, self.main_metric = run_dir, run_log, main_metric
        self.best = best  # {"epoch": n, "metric": main_metric, "value": its value}
        self.signum = None

    def after_batch(self):
        if self.signum is not None and self.training:  # during validation, finish the epoch and save it first
            raise Interrupted(self.signum)

    def after_epoch(self):
        if not self.run_log.appended:
            return
        row = self.run_log.last
        with runs.atomic_path(self.run_dir / "last.pth") as tmp:
            save_model(tmp, self.learn.model, self.learn.opt, with_opt=True)
        value = row[self.main_metric]
        lower_is_better = self.main_metric in ("error_rate", "valid_loss")
        if self.best is None or (value < self.best["value"] if lower_is_better else value > self.best["value"]):
            self.best = {"epoch": row["epoch"], "metric": self.main_metric, "value": value}
            with runs.atomic_path(self.run_dir / "best.pth") as tmp:
                save_model(tmp, self.learn.model, None, with_opt=False)
        runs.write_json(self.run_dir / "checkpoint.json",
                        {"epochs_done": row["epoch"], "phase": row["phase"], "best": self.best,
                         "run_log": self.run_log.state()})
        if self.signum is not None:  # arrived during validation: stop now that the epoch is saved
            raise Interrupted(self.signum)


class ResumableEarlyStopping(EarlyStoppingCallback):
    """fastai's EarlyStoppingCallback, made resumable. The epochs a resumed schedule skips (fastai's
    SkipToEpoch) still reach after_epoch, with an empty record that fastai's tracker would index: they
    are not judged. `history`, the monitored values of the epochs done, is replayed first, so the best
    value and the epochs waited since carry on as in an uninterrupted run."""

    def __init__(self, *args, history: list[float] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.history, self.trained = list(history), False

    def before_fit(self):
        super().before_fit()
        for value in self.history:  # as fastai's after_epoch judges each epoch
            if self.comp(value - self.min_delta, self.best):
                self.best, self.wait = value, 0
            else:
                self.wait += 1
        self.history = []  # only the fit being resumed; fine_tune's second fit starts afresh, as in fastai

    def before_train(self):
        self.trained = True

    def after_epoch(self):
        if self.trained:
            self.trained = False
            super().after_epoch()


@contextlib.contextmanager
def stop_on_signals(target):
    """SIGINT and SIGTERM set `target.signum` (Checkpoints, or distributed.signal_sync's flag), which the
    training loop acts on at the next batch."""

    def flag(signum, frame):
        target.signum = signum

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def load_last(learn, run_dir: Path) -> None:
    """Model and optimizer state of the last completed epoch, for --resume."""
    from fastai.learner import load_model

    learn.create_opt()
    load_model(run_dir / "last.pth", learn.model, learn.opt, with_opt=True, device=learn.dls.device)


def metrics_done(run_dir: Path, state: dict) -> tuple[list[str], list[list]]:
    """metrics.csv's header and rows for the epochs the checkpoint holds: a kill between writing an epoch's
    row and its checkpoint leaves one row too many, which a resumed run must not repeat."""
    header, rows = read_metrics(run_dir / "metrics.csv")
    return header, rows[: state["epochs_done"]]


def read_metrics(path: Path) -> tuple[list[str], list[list]]:
    import csv

    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    typed = [[int(r[0]), r[1], *[float(v) for v in r[2:]]] for r in rows]
    return header, typed
