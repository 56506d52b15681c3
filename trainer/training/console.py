"""The terminal display, as a subscriber to training's events: rich bars on a terminal, one plain line per
epoch (and a line at each quarter of a long epoch) elsewhere, only warnings (and what the lr_find gate needs a
person to do) with quiet. The long steps around the epochs (scan, presizing, caches, downloads) go to stderr,
as trainer.progress shows them: a bar on a terminal, else one line each."""

from __future__ import annotations

from pathlib import Path

from trainer.progress import StepDisplay
from trainer.runs.rundir import LR_FIND_PNG
from trainer.training.events import Event


class ConsoleDisplay:
    def __init__(self, console, live: bool | None = None, quiet: bool = False, errors=None):
        self.console, self.quiet = console, quiet
        self.errors = errors or console  # warnings go to stderr, even when quiet
        self.live = (console.is_terminal if live is None else live) and not quiet
        self.bars = None
        self.epochs_total = 1
        self.at_gate = False  # --lr review waits for a person: its instructions show even when quiet
        self.steps = StepDisplay(self.errors, quiet=quiet)  # stdout stays the run's lines (and its directory)

    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"on_{event.kind}", None)
        if handler:
            handler(**event.data)

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, emoji=False)

    def on_note(self, text: str, level: str) -> None:
        self.close()  # training prints no notes: one after its batches (an early stop) means it is over
        if level == "warning":
            self.errors.print(f"warning: {text}", highlight=False, markup=False, emoji=False)
        elif not self.quiet:
            self.print(text)
        elif self.at_gate:
            self.errors.print(text, highlight=False, markup=False, emoji=False)

    def on_step(self, **data) -> None:
        self.steps.show(**data)

    def on_run_started(self, epochs_total: int | None = None, **_) -> None:
        self.epochs_total = epochs_total or 1

    def on_batch(self, phase: str, batch: int, batches: int, loss: float | None, seconds: float, **_) -> None:
        if self.live:
            self.advance_bars(phase, batch, batches, loss)
        elif phase == "train" and not self.quiet and batches >= 40 and batch % (batches // 4) == 0 and batch < batches:
            # No bars in a log file: a line at each quarter of a long epoch shows it is alive.
            self.print(f"  {round(100 * batch / batches)}% of the epoch ({batch}/{batches} batches), "
                       f"loss {loss:.4f}, {seconds:.0f}s")

    def advance_bars(self, phase: str, batch: int, batches: int, loss: float | None) -> None:
        if self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bars = Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                                 console=self.console, transient=True)
            self.epoch_bar = self.bars.add_task("epoch", total=self.epochs_total, loss="")
            self.batch_bar = self.bars.add_task("train", total=1, loss="")
            self.bars.start()
        if batch == 1:
            self.bars.reset(self.batch_bar, total=batches, description=phase, loss="")
        # completed, not advance: a follower of the service's stream sees a few batches a second, not each
        self.bars.update(self.batch_bar, completed=batch, loss=f"loss {loss:.4f}" if loss is not None else "")

    def on_epoch(self, row: dict, epochs_total: int, **_) -> None:
        if self.bars:
            self.bars.advance(self.epoch_bar)
            if row["epoch"] >= epochs_total:  # the last epoch: export and plots follow, with no bar to show
                self.close()
        if not self.quiet:
            values = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "phase", "seconds"))
            phase = " (frozen body)" if row["phase"] == "frozen" else ""
            self.print(f"epoch {row['epoch']}/{epochs_total}{phase}  {values}  {row['seconds']:.1f}s")

    def on_lr_review(self, run_dir: str, suggestions: dict, **_) -> None:
        """--lr review waits at the lr_find gate: what lr_find suggests, and its curve (the next note, or the
        terminal's question, says how to answer)."""
        self.close()
        self.at_gate = True
        if not self.quiet:
            values = ", ".join(f"{name} {value:.2e}" for name, value in suggestions.items())
            self.print(f"lr_find suggests {values}: the run waits for a learning rate (the curve: "
                       f"{Path(run_dir) / LR_FIND_PNG})")

    def on_lr_chosen(self, lr: float, suggestion: str | None, **_) -> None:
        self.at_gate = False
        if not self.quiet:
            self.print(f"learning rate {lr:.2e} chosen ({suggestion or 'typed'}): training goes on")

    def on_finished(self, **_) -> None:
        self.close()

    def on_failed(self, **_) -> None:
        self.close()

    def on_interrupted(self, **_) -> None:
        self.close()

    def close(self) -> None:
        self.steps.close()
        if self.bars:
            self.bars.stop()
            self.bars = None
