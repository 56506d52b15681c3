"""The training callback that records the run (epoch rows, per-batch losses and learning rates, throughput)
and publishes it as events: a batch event after every batch, an epoch event when a row is complete."""

from __future__ import annotations

import math
import time

import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.torch_core import find_bs


class RunLog(Callback):
    """Rows of metrics.csv (written by events.MetricsFile, a subscriber), and what --resume restores.

    Spans both fits of fine_tune (frozen, then unfrozen), unlike fastai's Recorder. Kept instead of fastai's
    CSVLogger, which appends to the file in place (a kill can leave half a row), starts a new header per
    fit, and holds nothing --resume can restore (per-batch losses and lrs, the smoothed loss).
    """

    order = Recorder.order + 1  # Recorder has the epoch's values by then

    def __init__(self, events, epochs_total: int):
        self.events, self.epochs_total = events, epochs_total
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
        self.learn.logger = lambda *_: None  # Recorder would print its own table: the events say it
        # fine_tune's first fit trains the head alone, on a frozen body
        self.phase = "frozen" if getattr(self.opt, "frozen_idx", 0) > 0 else "train"
        self.names = list(self.recorder.metric_names[1:-1])  # drop 'epoch' and 'time'
        self.header = ["epoch", "phase", *self.names, "seconds"]
        resumed, self.resumed_smooth_loss = self.resumed_smooth_loss, None
        if resumed and self.rows and self.rows[-1][1] == self.phase:  # the same fit goes on (Recorder reset it)
            self.recorder.smooth_loss.val, self.recorder.smooth_loss.count = torch.tensor(resumed[0]), resumed[1]

    def before_epoch(self):
        self.epoch_start = time.perf_counter()

    def before_train(self):
        self.train_start = time.perf_counter()
        self.trained = True

    def after_batch(self):
        loss = None
        if self.training:
            loss = float(self.smooth_loss)
            self.train_images += find_bs(self.yb)
            self.batch_losses.append(loss)
            self.batch_lrs.append([float(h["lr"]) for h in self.opt.hypers])
        self.events.publish("batch", epoch=len(self.rows) + 1, phase="train" if self.training else "valid",
                            batch=self.iter + 1, batches=len(self.dl), loss=loss,
                            seconds=round(time.perf_counter() - self.epoch_start, 3))

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
        self.events.publish("epoch", row=self.last, header=self.header, epochs_total=self.epochs_total)

    @property
    def last(self) -> dict:
        return dict(zip(self.header, self.rows[-1])) if self.rows else {}

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else math.nan
