"""SIGINT and SIGTERM at every phase of a training command, and a stop message built from what is on disk.

One handler covers the whole command (preparing the data, lr_find, the loop, the outputs after it): outside
the loop a signal stops at once (every write is atomic: a cut write leaves the previous file); inside it,
checkpoint.stop_on_signals sets a flag the loop acts on at the next batch. Whatever the phase, the message
says what the run directory holds: a checkpoint of epoch N or none, the model exported or not. A run stopped
before its first checkpoint holds nothing a new fit would not write again, and `--resume` cannot continue
it: its directory is removed, so `trainer runs` never lists a run that cannot go on.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrainingInterrupted
from trainer.runs import rundir
from trainer.training.checkpoint import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Stop:
    """What the command has done so far, for the message: set as the pipeline goes."""

    command: str  # "fit", "resume" or "lr-find"
    run_dir: Path | None = None  # once it exists
    created: bool = False  # this command created run_dir (fit, lr-find): removable while it holds no checkpoint
    epochs_total: int | None = None
    resume: str = ""  # the command that continues the run
    quiet: bool = False  # a distributed rank other than 0: rank 0 reports


def raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def handlers(handler):
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def stopping(command: str, events):
    """Run a training command under one signal handler; a signal (or Ctrl-C's KeyboardInterrupt) at any point
    becomes the "interrupted" event and TrainingInterrupted, with the message the files on disk support."""
    stop = Stop(command)
    with handlers(raise_interrupted):
        try:
            yield stop
        except (Interrupted, KeyboardInterrupt) as e:
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            with handlers(signal.SIG_IGN):  # a second signal does not cut the clean-up short
                message = "" if stop.quiet else stop_message(stop, signal.Signals(signum).name)
                if message:
                    events.publish("interrupted", run_dir=str(stop.run_dir) if stop.run_dir else None,
                                   message=message, signum=int(signum))
            raise TrainingInterrupted(message, int(signum)) from None


def epochs_saved(run_dir: Path) -> int | None:
    """The epochs last.pth holds (0: no checkpoint; None: a checkpoint whose checkpoint.json does not say)."""
    if not (run_dir / rundir.LAST).is_file():
        return 0
    try:
        return int(json.loads((run_dir / rundir.CHECKPOINT).read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_message(stop: Stop, name: str) -> str:
    """One line naming what is on disk and what to do next."""
    run_dir = stop.run_dir
    if run_dir is None or not run_dir.is_dir():
        return f"stopped by {name} before a run directory was created; nothing was saved"
    if (run_dir / rundir.SUMMARY).is_file():
        return f"stopped by {name} after the run finished; {run_dir} is complete"
    done = epochs_saved(run_dir)
    if done == 0:
        return checkpointless(stop, name)
    total = f" of {stop.epochs_total}" if stop.epochs_total else ""
    saved = f"the checkpoint of epoch {done}{total} is saved" if done else "a checkpoint (last.pth) is saved"
    exported = (run_dir / rundir.WEIGHTS).is_file() and (run_dir / rundir.MODEL_META).is_file()
    if exported:
        return (f"stopped by {name} after training ended: {saved} and the model is exported (model.safetensors); "
                f"the plots and summary are not written: finish them with `{stop.resume}`")
    ended = done is not None and stop.epochs_total is not None and done >= stop.epochs_total
    where = "after training ended" if ended else f"after epoch {done}{total}" if done else "during training"
    return f"stopped by {name} {where}: {saved}, the model is not exported: continue with `{stop.resume}`"


def checkpointless(stop: Stop, name: str) -> str:
    """A run with no checkpoint: removed if this command created it, else (never expected) left as it is."""
    run_dir, again = stop.run_dir, f"`trainer {stop.command}` again"
    if not stop.created:
        return f"stopped by {name}; {run_dir} holds no checkpoint (last.pth): start again with a new `trainer fit`"
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        return (f"stopped by {name} before the first checkpoint; {run_dir} could not be removed and holds no "
                f"checkpoint: delete it and run {again}")
    what = "before the first epoch's checkpoint" if stop.command == "fit" else "before lr_find finished"
    return f"stopped by {name} {what}; nothing was kept ({run_dir} was removed): run {again}"
