"""Progress of a long step with a count (the image scan, presizing, the decoded-image cache, a download, inference):
one small mechanism for all of them.

The code doing the work opens a `step` and advances it; the step publishes "step" events (started, a few
updates a second at most, then finished or failed) through a `publish(kind, **data)` callable: training's
Events.publish (so the run's subscribers, the service's job log among them, see it), a StepDisplay's own
`publish` (interpret, predict, evaluate), or None (the Python API's quiet default: nothing at all).

StepDisplay renders them on stderr: a rich bar on a terminal; elsewhere (CI, a service's log, a pipe) one line
per step when it ends, with its count and time, e.g. `scanned 70,000 images in 12.3 s (2 unreadable)`.

  event data   step (a name of STEPS), state ("started", "running", "finished", "failed"), done, total (None:
               unknown), unit ("images", "bytes"), seconds (since it started), detail (the line's parenthesis)
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Callable

STEPS = {  # name: (what its bar says, what its line says when it is done)
    "scan": ("scanning", "scanned"),
    "presize": ("presizing", "presized"),
    "decode": ("decoding", "decoded"),
    "download": ("downloading", "downloaded"),
    "predict": ("predicting", "predicted"),
}
# a finished step's line, for whoever reads stderr around them (a log's reader, the tests)
LINE = re.compile(rf"^({'|'.join(done for _, done in STEPS.values())}) [\d,.]+ \S+ in [\d.]+ s( \(.*\))?$")
UPDATES_PER_SECOND = 4  # a bar (and the service's stream) sees a few updates a second, never one per item


class Step:
    """One long step's count; `detail` (e.g. "2 unreadable") ends its line."""

    def __init__(self, publish: Callable | None, name: str, total: int | None, unit: str = "images"):
        self.publish, self.name, self.total, self.unit = publish, name, total, unit
        self.done, self.detail = 0, ""
        self.start = self.last = time.perf_counter()

    def send(self, state: str) -> None:
        if self.publish is not None:
            self.publish("step", step=self.name, state=state, done=self.done, total=self.total, unit=self.unit,
                         seconds=round(time.perf_counter() - self.start, 3), detail=self.detail)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.publish is not None and now - self.last >= 1 / UPDATES_PER_SECOND:
            self.last = now
            self.send("running")


@contextmanager
def step(publish: Callable | None, name: str, total: int | None, unit: str = "images"):
    """A Step from start to end: "started", "running" updates, then "finished" (or "failed" when the work
    raised, so a bar is taken down before the error's line)."""
    current = Step(publish, name, total, unit)
    current.send("started")
    try:
        yield current
    except BaseException:
        current.send("failed")
        raise
    current.send("finished")


def each(work: Callable, chunk: list) -> list:
    """A chunk's results, in a worker thread or process (a module-level function: a process pool pickles it)."""
    return [work(item) for item in chunk]


def counted_map(work: Callable, items, workers: int, publish: Callable | None, name: str,
                detail: Callable[[list], str] | None = None, processes: bool = False) -> list:
    """[work(item) for item in items], in the items' order, counted as the step `name`: over `workers` threads
    (PIL decodes and reads files without the GIL), or serially in this thread with workers=1. `processes`:
    worker processes instead, as fastai's parallel() does (`work` a module-level function), for work that holds
    the GIL (opening a small file and parsing its header is Python). A failure or Ctrl-C drops the items not
    started yet. `detail`: the finished line's parenthesis, from the results."""
    items = list(items)
    results: list = []
    with step(publish, name, len(items)) as doing:
        if workers <= 1 or len(items) < 2:
            for item in items:
                results.append(work(item))
                doing.advance()
        else:
            import functools
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

            # chunks: a future per tiny PNG would cost more than reading it (a process's: more again)
            size = max(1, min(1024 if processes else 64, len(items) // (workers * 8)))
            chunks = [items[i:i + size] for i in range(0, len(items), size)]
            if processes:
                import multiprocessing

                # forkserver: a clean process forks the workers, not this one (its threads, torch's OpenMP pool)
                method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
            else:
                pool = ThreadPoolExecutor(workers)
            try:
                for done in pool.map(functools.partial(each, work), chunks):  # in the items' order
                    results += done
                    doing.advance(len(done))
            finally:
                pool.shutdown(cancel_futures=True)
        if detail is not None:
            doing.detail = detail(results)
    return results


def amount(n: float, unit: str) -> str:
    if unit == "bytes":
        return f"{n / 1e6:,.1f} MB"
    return f"{n:,} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def line(step: str, done: int, unit: str, seconds: float, detail: str = "", **_) -> str:
    """A finished step in one line: `scanned 70,000 images in 12.3 s (2 unreadable)`."""
    return f"{STEPS.get(step, (step, step))[1]} {amount(done, unit)} in {seconds:.1f} s{f' ({detail})' if detail else ''}"


class StepDisplay:
    """Steps on `console` (stderr): a rich bar on a terminal, else one line per step at its end; nothing when
    quiet. A subscriber to events (`display(event)`) and a `publish` for code outside training."""

    def __init__(self, console, live: bool | None = None, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.live = (console.is_terminal if live is None else live) and not quiet
        self.bar = None

    def __call__(self, event) -> None:
        if event.kind == "step":
            self.show(**event.data)

    def publish(self, kind: str, **data) -> None:
        if kind == "step":
            self.show(**data)

    def show(self, step: str, state: str, done: int, total: int | None, unit: str, seconds: float,
             detail: str = "", **_) -> None:
        if self.quiet:
            return
        if state in ("started", "running"):
            if self.live:
                self.update(step, done, total, unit, state == "started")
            return
        self.close()
        if state == "finished":
            self.console.print(line(step, done, unit, seconds, detail), highlight=False, markup=False, emoji=False)

    def update(self, step: str, done: int, total: int | None, unit: str, started: bool) -> None:
        if started:
            self.close()
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
                                refresh_per_second=UPDATES_PER_SECOND)
            self.task = self.bar.add_task(STEPS.get(step, (step,))[0], total=total, count="")
            self.bar.start()
        count = amount(done, unit) if total is None else f"{amount(done, unit)} of {total:,}" if unit != "bytes" \
            else f"{amount(done, unit)} of {amount(total, unit)}"
        self.bar.update(self.task, completed=done, total=total, count=count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def stderr_display(quiet: bool = False) -> StepDisplay:
    """The CLI's display of steps outside training (interpret, predict, evaluate): stderr, literal text."""
    from rich.console import Console

    return StepDisplay(Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False), quiet=quiet)
