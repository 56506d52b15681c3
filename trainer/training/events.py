"""What training tells whoever listens: one small vocabulary of events, published to any number of subscribers.

A subscriber is any callable taking an Event: the terminal display (training.console), the run log
(MetricsFile, metrics.csv), a test's recorder, the service's event store. Training functions take an
`Events` and never a console: they publish, subscribers decide what to show or keep.

  kind          when                                         data
  run_started   the run directory exists (or resume began)   run_dir, recipe, command, epochs_total, resumed_after
  note          a line for people (data, device, caches)     text, level ("info" or "warning")
  step          a long step before or after the epochs (the   step, state, done, total, unit, seconds, detail
                image scan, presizing, the decoded-image      (trainer.progress: started, a few running updates
                cache, a download, inference): its count      a second, then finished or failed)
  batch         after each training or validation batch      epoch, phase ("train"/"valid"), batch, batches,
                                                             loss (training), seconds (since the epoch began)
  epoch         an epoch's metrics row is complete           row ({epoch, phase, metrics..., seconds}), header,
                                                             epochs_total
  checkpoint    last.pth holds that epoch                    epoch, path, best
  lr_find       lr_find's curve is read                      suggestions, points
  lr_review     --lr review: the run waits at the lr_find    run_dir, suggestions, points
                gate for a person's choice (lr_choice.json)
  lr_chosen     the gate's rate is chosen: training goes on  lr, suggestion (its name, or None for a number)
  finished      summary.json is written: the run is done     run_dir, summary
  failed        training raised; error.log has the traceback run_dir, error
  interrupted   a signal stopped the run                     run_dir, message, signum
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

KINDS = ("run_started", "note", "step", "batch", "epoch", "checkpoint", "lr_find", "lr_review", "lr_chosen", "finished",
         "failed", "interrupted")


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict
    at: float = field(default_factory=time.time)  # seconds since the epoch, when it was published

    def to_dict(self) -> dict:
        return {"kind": self.kind, "at": self.at, **self.data}


Subscriber = Callable[[Event], None]


class Events:
    """The publisher: every event goes to each subscriber in the order they subscribed. `muted` (a distributed
    rank other than 0) publishes nothing: rank 0 speaks for the job."""

    def __init__(self, *subscribers: Subscriber):
        self.subscribers: list[Subscriber] = list(subscribers)
        self.muted = False

    def subscribe(self, subscriber: Subscriber, first: bool = False) -> None:
        """`first`: before the others (the run log, so every other subscriber finds metrics.csv up to date)."""
        self.subscribers.insert(0 if first else len(self.subscribers), subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def publish(self, kind: str, **data) -> None:
        assert kind in KINDS, kind
        if self.muted:
            return
        event = Event(kind, data)
        for subscriber in list(self.subscribers):
            subscriber(event)

    def note(self, text: str) -> None:
        self.publish("note", text=text, level="info")

    def warn(self, text: str) -> None:
        self.publish("note", text=text, level="warning")


class Recorder:
    """A subscriber that keeps every event (tests, the Python API's Run.events)."""

    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class MetricsFile:
    """The run log as a subscriber: metrics.csv rewritten atomically after every epoch row, so a crash keeps
    what was done (not fastai's CSVLogger, which appends in place: a kill can leave half a row)."""

    def __init__(self, path: Path, rows: list[list] = ()):
        self.path, self.rows = path, list(rows)  # a resumed run starts from the checkpoint's rows

    def __call__(self, event: Event) -> None:
        if event.kind == "epoch":
            from trainer.files import write_csv

            header = event.data["header"]
            self.rows.append([event.data["row"][name] for name in header])
            write_csv(self.path, header, self.rows)


EVENT_LOG = "TRAINER_EVENT_LOG"  # set by the service for a job's process: where it writes its events
JOB_ID = "TRAINER_JOB_ID"  # set by the service too: the job's id, for the lines that name it (`trainer jobs lr ID`)


class JsonLinesLog:
    """Events as JSON lines appended to a file, for another process (the service) to read as they come.

    Each event is one write of one whole line, flushed at once. Batch events are thinned to a few a second
    per phase, and the last batch of each phase is always written: enough for live progress, small enough to
    store every line. Writing never fails the run: a full disk loses the log, not the training."""

    BATCHES_PER_SECOND = 4

    def __init__(self, path: Path):
        self.path = Path(path)
        self.last_batch: dict = {}
        self.file = None
        self.broken = False

    def __call__(self, event: Event) -> None:
        import json

        if self.broken:
            return
        if event.kind == "batch":
            key = (event.data.get("epoch"), event.data.get("phase"))
            last = event.data.get("batch") == event.data.get("batches")
            if not last and event.at - self.last_batch.get(key, 0.0) < 1 / self.BATCHES_PER_SECOND:
                return
            self.last_batch[key] = event.at
        try:
            if self.file is None:
                self.file = open(self.path, "a", encoding="utf-8")
                if self.file.tell() and not self.ends_a_line():  # a kill cut the last attempt's line short
                    self.file.write("\n")
            self.file.write(json.dumps(event.to_dict(), default=str) + "\n")
            self.file.flush()
        except (OSError, ValueError):
            self.broken = True

    def ends_a_line(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"


def event_log_from_environment() -> list:
    """The JSON-lines subscriber when the service started this process (TRAINER_EVENT_LOG), else none."""
    import os

    path = os.environ.get(EVENT_LOG)
    return [JsonLinesLog(Path(path))] if path else []
