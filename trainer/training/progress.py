"""Training callbacks: the per-epoch log (metrics.csv, throughput) and what the user sees.

Rich progress bars on a terminal, one plain line per epoch otherwise, nothing with --quiet.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.torch_core import find_bs

from trainer.files import write_csv


class RunLog(Callback):
    """Rows of metrics.csv, rewritten after every epoch so a crash keeps what was done.

    Spans both fits of fine_tune (frozen, then unfrozen), unlike fastai's Recorder. Kept instead of fastai's
    CSVLogger, which appends to the file in place (a kill can leave half a row), starts a new header per
    fit, and holds nothing --resume can restore (per-batch losses and lrs, the smoothed loss).
    """

    order = Recorder.order + 1  # Recorder has the epoch's values by then

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[list] = []
        self.header: list[str] = []
        self.batch_losses: list[float] = []
        self.batch_lrs: list[list[float]] = []  # each training batch's learning rate, per parameter group
        self.epoch_ends: list[int] = []  # index into batch_losses where each epoch ended
        self.train_seconds = 0.0
        self.train_images = 0
        self.trained = False  # this epoch ran (not skipped by a resumed schedule's SkipToEpoch)
        self.appended = False  # after_epoch added a row: later callbacks act on it
        self.resumed_smooth_loss = None  # [value, count] of fastai's smoothed loss, from a checkpoint

    def state(self) -> dict:
        """What metrics.csv does not hold, for --resume."""
        smooth = self.recorder.smooth_loss  # the running average train_loss shows, which goes on across epochs
        return {"batch_losses": self.batch_losses, "batch_lrs": self.batch_lrs, "epoch_ends": self.epoch_ends,
                "train_seconds": self.train_seconds, "train_images": self.train_images,
                "smooth_loss": [float(smooth.val), smooth.count]}

    def restore(self, header: list[str], rows: list[list], state: dict) -> None:
        self.header, self.rows = header, rows
        self.batch_losses, self.epoch_ends = state["batch_losses"], state["epoch_ends"]
        self.batch_lrs = state.get("batch_lrs", [])  # absent from checkpoints written before it was recorded
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.resumed_smooth_loss = state.get("smooth_loss")

    def before_fit(self):
        # fine_tune's first fit trains the head alone, on a frozen body
        self.phase = "frozen" if getattr(self.opt, "frozen_idx", 0) > 0 else "train"
        self.names = list(self.recorder.metric_names[1:-1])  # drop 'epoch' and 'time'
        self.header = ["epoch", "phase", *self.names, "seconds"]
        resumed, self.resumed_smooth_loss = self.resumed_smooth_loss, None
        if resumed and self.rows and self.rows[-1][1] == self.phase:  # the same fit goes on (Recorder reset it)
            import torch

            self.recorder.smooth_loss.val, self.recorder.smooth_loss.count = torch.tensor(resumed[0]), resumed[1]

    def before_epoch(self):
        self.epoch_start = time.perf_counter()

    def before_train(self):
        self.train_start = time.perf_counter()
        self.trained = True

    def after_batch(self):
        if self.training:
            self.train_images += find_bs(self.yb)
            self.batch_losses.append(float(self.smooth_loss))
            self.batch_lrs.append([float(h["lr"]) for h in self.opt.hypers])

    def after_train(self):
        self.train_seconds += time.perf_counter() - self.train_start

    def after_epoch(self):
        self.appended, self.trained = self.trained, False
        if not self.appended:
            return
        values = [float(v) for v in self.recorder.log[1:1 + len(self.names)]]
        seconds = round(time.perf_counter() - self.epoch_start, 2)
        self.rows.append([len(self.rows) + 1, self.phase, *[round(v, 6) for v in values], seconds])
        self.epoch_ends.append(len(self.batch_losses))
        write_csv(self.path, self.header, self.rows)

    @property
    def last(self) -> dict:
        return dict(zip(self.header, self.rows[-1])) if self.rows else {}

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else math.nan


class ConsoleProgress(Callback):
    """Epoch and batch bars (rich) on a terminal; a plain line per epoch elsewhere."""

    order = RunLog.order + 1

    def __init__(self, console, total_epochs: int, run_log: RunLog, live: bool, quiet: bool):
        self.console, self.total_epochs, self.run_log = console, total_epochs, run_log
        self.live, self.quiet = live and not quiet, quiet
        self.bars = None

    def before_fit(self):
        self.learn.logger = lambda *_: None  # Recorder would print its own table
        if self.live and self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bars = Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                                 console=self.console, transient=True)
            self.epoch_bar = self.bars.add_task("epoch", total=self.total_epochs, loss="")
            self.batch_bar = self.bars.add_task("train", total=1, loss="")
            self.bars.start()

    def before_train(self):
        self._reset("train")

    def before_validate(self):
        self._reset("valid")

    def _reset(self, description):
        if self.bars:
            self.bars.reset(self.batch_bar, total=len(self.dl), description=description, loss="")

    def before_epoch(self):
        self.epoch_start = time.perf_counter()

    def after_batch(self):
        if self.bars:
            loss = f"loss {float(self.smooth_loss):.4f}" if self.training else ""
            self.bars.update(self.batch_bar, advance=1, loss=loss)
        elif self.training and not self.quiet:
            # No bars in a log file: a line at each quarter of a long epoch shows it is alive.
            done, total = self.iter + 1, len(self.dl)
            if total >= 40 and done % (total // 4) == 0 and done < total:
                self.console.print(f"  {round(100 * done / total)}% of the epoch ({done}/{total} batches), "
                                   f"loss {float(self.smooth_loss):.4f}, {time.perf_counter() - self.epoch_start:.0f}s",
                                   highlight=False)

    def after_epoch(self):
        if not self.run_log.appended:
            return
        if self.bars:
            self.bars.advance(self.epoch_bar)
        if not self.quiet:
            row = self.run_log.last
            values = "  ".join(f"{k} {row[k]:.4f}" for k in self.run_log.names)
            phase = " (frozen body)" if row["phase"] == "frozen" else ""
            self.console.print(f"epoch {row['epoch']}/{self.total_epochs}{phase}  {values}  "
                               f"{row['seconds']:.1f}s", highlight=False)

    def close(self):
        if self.bars:
            self.bars.stop()
            self.bars = None
