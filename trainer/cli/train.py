"""`trainer fit` and `trainer lr-find`: their options come from trainer.options; each calls trainer.api."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.cli.app import app, console
from trainer.cli.options import RUNS, OptionalRecipe, OutDir, Quiet, with_options
from trainer.options import HARDWARE, LR_FIND_OPTIONS, NUM_IT_MAX, OPTIONS, TRAINING

LR_FIND = "lr_find"  # the --help panel of lr-find's own options


def display(quiet: bool):
    """The terminal as a subscriber to training's events."""
    from trainer.training.console import ConsoleDisplay

    return ConsoleDisplay(console(), quiet=quiet, errors=console(stderr=True))


@app.command()
@with_options(tuple(OPTIONS), defaults={"device": "auto; with --resume: what the run asked, on this machine"},
              config=True)
def fit(
    recipe: OptionalRecipe = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue an interrupted run directory from its last epoch, with its own options.",
        rich_help_panel=TRAINING)] = None,
    nproc: Annotated[Optional[int], typer.Option(
        min=1, help="Train with N processes on this machine (one per GPU on CUDA, CPU processes otherwise): runs "
                    "torchrun for you. --bs is per process.", rich_help_panel=HARDWARE)] = None,
    out: OutDir = RUNS, quiet: Quiet = False, *, options: dict, print_config: bool = False,
):
    """Train a recipe and write a run directory: model, config, metrics, plots."""
    from trainer import api

    if print_config:
        return show_config("fit", recipe, options, out, resume)

    run = api.fit(recipe, resume=resume, nproc=nproc, out=out, subscribers=[display(quiet)], progress=False,
                  quiet=quiet, **options)
    if run is None or nproc is not None:  # another rank, or torchrun's workers: rank 0 reported
        return
    if not quiet:
        print_summary(run.summary)
        console().print(f"report: {run.dir / 'report.html'}")
    print(run.dir)


def print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table("metric", "value", title=f"{summary['recipe']} · run {summary['run']}")
    for name, value in summary["final"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("train images/s", f"{summary['train_images_per_second']:.1f}")
    table.add_row("device", f"{summary['device']} ({summary['precision']})")
    baseline = summary.get("baseline")
    if baseline and baseline["status"] != "not comparable":
        table.add_row("baseline", f"{baseline['metric']} {baseline['expected']:g}: {baseline['status']}")
    console().print(table)
    if "interpretation" in summary:
        print_confused(summary["interpretation"]["most_confused"])


def print_confused(pairs) -> None:
    if pairs:
        console().print("most confused (actual -> predicted, count): "
                        + ", ".join(f"{a} -> {p} ({n})" for a, p, n in pairs), markup=False)


def show_config(command: str, recipe: str | None, options: dict, out: Path, resume: Path | None = None,
                allowed=tuple(OPTIONS)) -> None:
    """--print-config: the options resolved as far as they can be without the data or the machine, as YAML."""
    from trainer import api
    from trainer.config_file import as_yaml, printable

    print(as_yaml(printable(api.resolved_config(recipe, options, out, resume, allowed, command), allowed), command),
          end="")


@app.command("lr-find")
@with_options(LR_FIND_OPTIONS, defaults={"precision": "auto"}, config=True)
def lr_find(
    recipe: OptionalRecipe = None,
    start_lr: Annotated[float, typer.Option(help="Learning rate to start from.", rich_help_panel=LR_FIND)] = 1e-7,
    end_lr: Annotated[float, typer.Option(
        help="Learning rate to end at (stops early if the loss diverges).", rich_help_panel=LR_FIND)] = 10.0,
    num_it: Annotated[int, typer.Option(
        min=10, max=NUM_IT_MAX, help="Number of mini-batches to try (fastai drops the first and last points).",
        rich_help_panel=LR_FIND)] = 100,
    lr: Annotated[Optional[str], typer.Option(hidden=True)] = None,  # refused in one line, not as an unknown option
    out: OutDir = RUNS, quiet: Quiet = False, *, options: dict, print_config: bool = False,
):
    """Find a learning rate: fastai's lr_find with the minimum, steep, valley and slide suggestions."""
    from trainer import api
    from trainer.runs.rundir import LR_FIND_PNG

    if lr is not None:
        from trainer.errors import BadInput
        from trainer.options import LR_FIND_TAKES_NO_LR

        raise BadInput(LR_FIND_TAKES_NO_LR)
    if print_config:
        return show_config("lr-find", recipe, options, out, allowed=LR_FIND_OPTIONS)

    found = api.lr_find(recipe, start_lr=start_lr, end_lr=end_lr, num_it=num_it, out=out,
                        subscribers=[display(quiet)], progress=False, quiet=quiet, **options)
    run_dir = found["run"].dir
    if not quiet:
        from rich.table import Table

        table = Table("suggestion", "learning rate", title=f"lr_find · {recipe}")
        for name, value in found["suggestions"].items():
            table.add_row(name, f"{value:.2e}")
        console().print(table)
        console().print(f"plot: {run_dir / LR_FIND_PNG}; use one with `trainer fit {recipe} --lr VALUE`, "
                        f"or `--lr auto` for valley", markup=False)
    print(run_dir)
