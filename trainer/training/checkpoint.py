"""Nothing lost: a checkpoint after every epoch, a clean stop on SIGINT/SIGTERM, and --resume: saving and
restoring a run's state side by side, in this one module.

After each epoch, one file is written atomically (temp file, rename): last.pth, the whole state
of the run, in one torch.save, as nanoGPT keeps it: model, optimizer, grad scaler, every random
generator (python, numpy, torch, CUDA, the training loader's shuffle), the epoch count, the best
epoch and the run log with every metrics row. It is the one source of truth: --resume reads it
alone and rewrites metrics.csv and best.pth to match it. checkpoint.json (how far training got,
for people and `trainer runs`) and best.pth (the best epoch's weights) are written after it, so a
kill at any instant leaves the previous epoch's state or the new one, never a mix. A signal only
sets a flag; training stops at the next batch boundary, never inside a write.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import save_model
from fastai.torch_core import L, get_model

from trainer.runs import rundir
from trainer import files
from trainer.config import FitConfig, resume_config
from trainer.errors import BadInput
from trainer.recipes import improves
from trainer.runs.rundir import read_config
from trainer.training.progress import RunLog


class Interrupted(BaseException):
    """Training stopped by a signal (a BaseException, like KeyboardInterrupt, so crash handling lets it by)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Checkpoints(Callback):
    """last.pth after every epoch, best.pth when the main metric improves. Kept instead of fastai's
    SaveModelCallback, whose learn.save writes in place (not atomic) and saves neither the random streams
    nor the run log that an exact --resume needs."""

    order = RunLog.order + 1  # after RunLog completed the epoch's row

    def __init__(self, run_dir: Path, run_log: RunLog, main_metric: str, events, best: dict | None = None):
        self.run_dir, self.run_log, self.main_metric, self.events = run_dir, run_log, main_metric, events
        self.best = best  # {"epoch": n, "metric": main_metric, "value": its value}
        self.signum = None

    def after_batch(self):
        if self.signum is not None and self.training:  # during validation, finish the epoch and save it first
            raise Interrupted(self.signum)

    def after_epoch(self):
        if not self.run_log.appended:
            return
        row = self.run_log.last
        value = row[self.main_metric]
        improved = improves(self.main_metric, value, self.best and self.best["value"])
        if improved:
            self.best = {"epoch": row["epoch"], "metric": self.main_metric, "value": value}
        save_state(self.run_dir, self.learn, {"epochs_done": row["epoch"], "phase": row["phase"], "best": self.best},
                   self.run_log)
        if improved:  # after last.pth: a kill in between is repaired on resume (restore_best)
            save_best(self.run_dir, self.learn)
        self.events.publish("checkpoint", epoch=row["epoch"], path=str(self.run_dir / rundir.LAST), best=self.best)
        if self.signum is not None:  # arrived during validation: stop now that the epoch is saved
            raise Interrupted(self.signum)


def save_state(run_dir: Path, learn, progress: dict, run_log: RunLog) -> None:
    """last.pth, the whole state, in one atomic write; then checkpoint.json mirrors `progress` for people."""
    scaler = getattr(learn, "scaler", None)
    state = {**progress, "format": "trainer-checkpoint/2",
             "model": get_model(learn.model).state_dict(), "opt": plain(learn.opt.state_dict()),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": rng_state(learn.dls.train), "run_log": plain(run_log.state()),
             "metrics": plain({"header": run_log.header, "rows": run_log.rows})}
    with files.atomic_path(run_dir / rundir.LAST, digest=True) as tmp:
        torch.save(state, tmp)
    files.write_json(run_dir / rundir.CHECKPOINT, {**progress, "run_log": state["run_log"]})  # a mirror, for people


def plain(value):
    """fastai's containers (L) as lists and numpy scalars as numbers, so the checkpoint loads with
    torch.load(weights_only=True): loading it runs no code."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, L)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):  # the one-cycle schedule sets numpy floats
        return value.item()
    return value


def save_best(run_dir: Path, learn) -> None:
    with files.atomic_path(run_dir / rundir.BEST, digest=True) as tmp:
        save_model(tmp, learn.model, None, with_opt=False)


def rng_state(train_dl) -> dict:
    """Every random stream training draws from: shuffling (the loader's own generator), augmentation and
    dropout (torch, CUDA), and python's and numpy's, as plain lists and tensors (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": train_dl.rng.getstate() if hasattr(train_dl, "rng") else None}


def restore_rng(state: dict, train_dl) -> None:
    """Continue the random streams where the checkpoint left them, so a resumed run draws what the
    uninterrupted run would have (the same shuffles, augmentations and dropout masks)."""
    rng = state.get("rng")
    if not rng:
        return
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng["loader"] is not None and hasattr(train_dl, "rng"):
        train_dl.rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["loader"]))


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
    training loop acts on at the next batch; one that came after the last batch stops on the way out."""

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
    if getattr(target, "signum", None) is not None:  # e.g. during fastai's after_fit: not lost
        raise Interrupted(target.signum)


def resumable(run_dir: Path, given: dict) -> tuple[dict, FitConfig]:
    """(config.json, the options to continue with) of a run that --resume can continue, or one line saying
    why it cannot."""
    config = read_config(run_dir)  # validated: a damaged config.json says so, never "no checkpoint"
    recipe = config["recipe"]["name"]
    if (run_dir / rundir.SUMMARY).is_file():
        raise BadInput(f"{run_dir} already finished; start a new run with `trainer fit {recipe}`")
    cfg = resume_config(config, **given)  # the data where the run found it: no lookup or download again
    if not (run_dir / rundir.LAST).is_file():
        raise no_checkpoint(run_dir, recipe)
    return config, cfg


def no_checkpoint(run_dir: Path, recipe: str) -> BadInput:
    return BadInput(f"{run_dir} has no checkpoint (a whole last.pth): it stopped before its first epoch ended; "
                    f"start again with `trainer fit {recipe}`")


def restore(run_dir: Path, learn, device) -> dict:
    """Load the last completed epoch's state into `learn` (model, optimizer, grad scaler) and return it; the
    temporary files of writes a kill cut short are removed first."""
    files.remove_stale_temporaries(run_dir)
    state = read_state(run_dir, device)
    if state is None:
        raise no_checkpoint(run_dir, read_config(run_dir)["recipe"]["name"])
    if (run_dir / rundir.BEST).is_file():
        files.verify_digest(run_dir / rundir.BEST)
    load_last(learn, state, run_dir / rundir.LAST)
    return state


def read_state(run_dir: Path, device=None) -> dict | None:
    """The run's last.pth, checked (its recorded hash, then its layout), with what checkpoint.json adds for
    checkpoints from before last.pth held everything (model and optimizer only). None when there is none or
    it was cut short (empty); one line naming the file when it is damaged."""
    path = run_dir / rundir.LAST
    if not path.is_file() or path.stat().st_size == 0:
        return None
    files.verify_digest(path)
    try:
        state = torch.load(path, map_location=device or "cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused something in it, or it is no pickle at all
        why = ("it holds objects a weights-only load refuses, e.g. " + str(e).split("Unsupported global: GLOBAL ", 1)[1].split()[0]
               if "Unsupported global" in str(e) else "not a checkpoint: no torch.save file")
        raise damaged_last(path, why) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise damaged_last(path, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:80] if str(e).strip() else ''}") from None
    if not isinstance(state, dict):
        raise damaged_last(path, f"it holds a {type(state).__name__}, not a checkpoint's dict")
    if "epochs_done" not in state:  # the older layout: progress in checkpoint.json, metrics in metrics.csv
        try:
            progress = json.loads((run_dir / rundir.CHECKPOINT).read_text())
            header, rows = rundir.read_metrics(run_dir)
            state.update(progress, metrics={"header": header, "rows": rows[: progress["epochs_done"]]})
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            raise damaged_last(path, "an old-layout checkpoint without a readable checkpoint.json") from None
    check_state(path, state)
    return state


# What load_last and the resumed loop read from last.pth, and what each must be.
STATE_FIELDS = {"model": (dict, "the model's state dict"), "opt": (dict, "the optimizer's state"),
                "epochs_done": (int, "the number of epochs done"), "metrics": (dict, "the run's metrics rows")}


def check_state(path: Path, state: dict) -> None:
    for name, (kind, what) in STATE_FIELDS.items():
        if not isinstance(state.get(name), kind) or isinstance(state.get(name), bool):
            raise damaged_last(path, f"'{name}' must be {what}, got {type(state.get(name)).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise damaged_last(path, "'model' must hold only tensors")
    if not isinstance(state["metrics"].get("header"), list) or not isinstance(state["metrics"].get("rows"), list):
        raise damaged_last(path, "'metrics' must hold a header and rows")
    if state.get("best") is not None and not isinstance(state["best"], dict):
        raise damaged_last(path, "'best' must be null or the best epoch")


def damaged_last(path: Path, why: str) -> BadInput:
    return BadInput(f"{path} is damaged ({why}); restore it, or start again with `trainer fit`")


def load_last(learn, state: dict, path: Path = Path(rundir.LAST)) -> None:
    """Model, optimizer and grad scaler of the last completed epoch (`state` from read_state), for --resume."""
    learn.create_opt()
    try:
        get_model(learn.model).load_state_dict(state["model"])
    except RuntimeError as e:  # another recipe's or architecture's weights
        raise damaged_last(path, f"its model does not fit this run's: {str(e).strip().splitlines()[0][:100]}") from None
    try:
        learn.opt.load_state_dict(state["opt"])
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as e:
        raise damaged_last(path, f"its optimizer state does not fit this run's model ({type(e).__name__})") from None
    learn.resumed_scaler = state.get("scaler")  # precision.DeviceMixedPrecision picks it up at before_fit


def restore_files(run_dir: Path, learn, state: dict) -> None:
    """metrics.csv and best.pth as the checkpoint says: a kill after writing an epoch's metrics row or before
    writing its best.pth leaves them one epoch apart from last.pth."""
    metrics = state["metrics"]
    files.write_csv(run_dir / rundir.METRICS, metrics["header"], metrics["rows"])
    best = state.get("best")
    if best and best["epoch"] == state["epochs_done"]:  # the best epoch is the last one: its weights are loaded
        save_best(run_dir, learn)
