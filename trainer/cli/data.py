"""`trainer datasets` and `trainer download`: the recipes and their data."""

from __future__ import annotations

from typing import Annotated

import typer

from trainer.cli.app import app, console


@app.command()
def datasets():
    """List the recipes, their defaults and where their data is found locally."""
    from rich.table import Table

    from trainer.data.source import find_local
    from trainer.recipes import RECIPES

    table = Table("recipe", "what", "data", "epochs", "lr", "metrics", "local copy")
    table.columns[0].no_wrap = True
    for r in RECIPES.values():
        source = f"URLs.{r.url}" if r.url else (r.made_from or "--data")
        local = find_local(r)
        table.add_row(r.name, r.summary, source, str(r.epochs), f"{r.lr:g}", ", ".join(r.metrics),
                      str(local) if local else ("made on first use" if r.made_from else "-"))
    screen = console()
    if not screen.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        screen.width = 160
    screen.print(table)


@app.command()
def download(
    recipe: Annotated[str, typer.Argument(help="A recipe from `trainer datasets`.", show_default=False)],
    arch: Annotated[str, typer.Option(help="Architecture whose pretrained weights to cache.")] = "resnet34",
    weights: Annotated[bool, typer.Option("--weights/--no-weights", help="Also cache the pretrained weights.")] = True,
):
    """Fetch a recipe's data and pretrained weights ahead of time, for a machine that will be offline."""
    from trainer.data.source import download_recipe
    from trainer.progress import stderr_display

    screen = console()
    screen.print(f"data: {download_recipe(recipe, stderr_display().publish)}", markup=False)
    if weights:
        from trainer.model.arch import cache_weights

        screen.print(f"weights: {cache_weights(arch)}", markup=False)
