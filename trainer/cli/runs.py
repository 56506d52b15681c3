"""`trainer runs [list|show]`: past runs, read from their JSON files only (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from trainer.cli.app import app, console
from trainer.cli.options import RUNS, AsJson, RunsRoot


class ListByDefault(TyperGroup):
    """`trainer runs [RECIPE] [OPTIONS]` (and `trainer jobs [OPTIONS]`) stay the listing: words that do not start
    with a sub-command are list's."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(cls=ListByDefault, help="Past runs, newest first (`trainer runs [RECIPE]`, the same as "
                                               "`trainer runs list`), or one run (`trainer runs show RUN`).")
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(
    recipe: Annotated[Optional[str], typer.Argument(help="Only this recipe's runs.", show_default=False)] = None,
    out: RunsRoot = RUNS, as_json: AsJson = False,
):
    """Past runs, newest first, with their final metrics (also `trainer runs [RECIPE]`)."""
    from trainer.runs.listing import list_runs

    rows = list_runs(out, recipe)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print_runs(rows, out)
    else:
        console().print(f"no runs under {out}/" + (f"{recipe}/" if recipe else "") + "; start one with `trainer fit`",
                        markup=False)


def print_runs(rows: list[dict], out: Path) -> None:
    from rich.table import Table

    table = Table("id", "recipe", "arch", "epochs", "pretrained", "options", "device", "final metrics", "wall s",
                  "date", "state", title=f"runs under {out}/ (newest first)")
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, (int, float)) else f"{k} {v}"
                            for k, v in (r["final"] or {}).items() if not k.endswith("_loss"))
        cells = [r["id"], r["recipe"], r["arch"] or "-", r["epochs"] or "-",
                 {True: "yes", False: "no"}.get(r["pretrained"], "-"), r["changes"] or "", r["device"] or "-",
                 metrics or "-", f"{r['wall_seconds']:.0f}" if isinstance(r["wall_seconds"], (int, float)) else "-",
                 str(r["started"] or "-")[:16].replace("T", " "), r["state"]]
        table.add_row(*map(str, cells))  # str(): a hand-edited file may hold any JSON type
    screen = console()
    if not screen.is_terminal:
        screen.width = max(screen.width, 180)  # a pipe or a file gets whole cells, not ellipses
    screen.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="A run directory, run id or recipe (its newest run).", show_default=False)],
    out: RunsRoot = RUNS, as_json: AsJson = False,
):
    """One run: its state, config.json and metrics.csv."""
    from trainer.runs import rundir
    from trainer.runs.listing import describe_or_flag
    from trainer.runs.store import resolve_run

    run_dir = resolve_run(run, out, need_model=False)
    row = describe_or_flag(run_dir)
    config, problem = rundir.read_json(run_dir / rundir.CONFIG)
    header, rows = rundir.read_metrics_or_empty(run_dir)
    if as_json:
        print(json.dumps({**row, "config": config, "metrics": [dict(zip(header, r)) for r in rows]}, indent=2))
        return
    screen = console()
    screen.print(f"{run_dir}  ({row['state']})", markup=False)
    screen.print(json.dumps(config, indent=2) if config else f"{rundir.CONFIG} {problem}", markup=False)
    if header:
        from rich.table import Table

        table = Table(*header, title=rundir.METRICS)
        for r in rows:
            table.add_row(*map(str, r))
        screen.print(table)
    if (run_dir / rundir.REPORT).is_file():
        screen.print(f"report: {run_dir / rundir.REPORT}", markup=False)
