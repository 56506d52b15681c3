"""The `trainer` command line: parse, call, report. Heavy imports happen inside commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from trainer.errors import BadInput, TrainingFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai's image classification recipes as one command: fit, lr-find, interpret.")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(error: Exception) -> None:
    """One line on stderr and the error's exit code: no traceback for the user."""
    _console(stderr=True).print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    raise typer.Exit(error.exit_code)


@app.command()
def datasets():
    """List the recipes, their defaults and where their data is found locally."""
    from rich.table import Table

    from trainer.data import find_local
    from trainer.recipes import RECIPES

    table = Table("recipe", "what", "data", "epochs", "lr", "metrics", "local copy")
    table.columns[0].no_wrap = True
    for r in RECIPES.values():
        source = f"URLs.{r.url}" if r.url else ("scikit-learn" if r.name == "digits" else "--data")
        local = find_local(r)
        table.add_row(r.name, r.summary, source, str(r.epochs), f"{r.lr:g}", ", ".join(r.metrics),
                      str(local) if local else ("made on first use" if r.name == "digits" else "-"))
    console = _console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console.width = 160
    console.print(table)


@app.command()
def fit(
    recipe: str = typer.Argument(..., help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train [default: the recipe's]."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate [default: the recipe's]."),
    bs: Optional[int] = typer.Option(None, help="Batch size [default: 64]."),
    arch: Optional[str] = typer.Option(None, help="Architecture: resnet34 (default), resnet18, resnet50, any torchvision or timm name."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights [default: yes, except digits]."),
    weights: Optional[Path] = typer.Option(None, help="A local torchvision state dict to start from (no download)."),
    data: Optional[str] = typer.Option(None, help="Dataset folder or .tgz/.tar/.zip archive [default: data root, then FASTAI_HOME, then download]."),
    size: Optional[int] = typer.Option(None, help="Image size for recipes that resize (pets, pets_breeds, folder) [default: 224]."),
    valid_pct: Optional[float] = typer.Option(None, help="Random validation fraction instead of the folders' split (cifar10, folder)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", help="auto (mixed on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes [default: 0 on CPU, up to 8 on GPU]."),
    seed: Optional[int] = typer.Option(None, help="Random seed for the split, initial weights and shuffling [default: 42]."),
    out: Path = typer.Option(Path("runs"), help="Where run directories go: OUT/<recipe>/<id>/."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the run directory."),
):
    """Train a recipe and write a run directory: model, config, metrics, plots."""
    from trainer.config import FitConfig

    cfg = FitConfig(recipe=recipe, epochs=epochs, lr=lr, bs=bs, arch=arch, pretrained=pretrained,
                    weights=str(weights) if weights else None, data=data, size=size, valid_pct=valid_pct,
                    device=device, precision=precision, workers=workers, seed=seed, out=str(out))
    console = _console()
    try:
        from trainer.fit import fit as run_fit

        run_dir, summary = run_fit(cfg, console, quiet=quiet, live=console.is_terminal)
    except (BadInput, TrainingFailed) as e:
        _fail(e)
    if not quiet:
        _print_summary(console, summary)
    print(run_dir)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table("metric", "value", title=f"{summary['recipe']} · run {summary['run']}")
    for name, value in summary["final"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("train images/s", f"{summary['train_images_per_second']:.1f}")
    table.add_row("device", f"{summary['device']} ({summary['precision']})")
    console.print(table)


@app.command()
def download(
    recipe: str = typer.Argument(..., help="A recipe from `trainer datasets`."),
    arch: str = typer.Option("resnet34", help="Architecture whose pretrained weights to cache."),
    weights: bool = typer.Option(True, "--weights/--no-weights", help="Also cache the pretrained weights."),
):
    """Fetch a recipe's data and pretrained weights ahead of time, for a machine that will be offline."""
    console = _console()
    try:
        from trainer.data import locate
        from trainer.recipes import get_recipe

        r = get_recipe(recipe)
        if r.check == "folder":
            raise BadInput("recipe 'folder' uses your own images (--data): there is nothing to download")
        console.print(f"data: {locate(r, None)}")
        if weights:
            console.print(f"weights: {_cache_weights(arch)}")
    except BadInput as e:
        _fail(e)


def _cache_weights(arch: str) -> str:
    import torch
    import torchvision.models as tvm

    from trainer.learner import resolve_arch

    if isinstance(resolve_arch(arch), str):
        raise BadInput(f"'{arch}' is a timm model: timm caches its own weights on first use")
    try:
        tvm.get_model_weights(arch).DEFAULT.get_state_dict(progress=True)
    except OSError as e:
        raise BadInput(f"could not download weights for {arch} ({type(e).__name__}: {e}); "
                       f"copy a torchvision state dict here and pass it with --weights") from None
    return str(Path(torch.hub.get_dir()) / "checkpoints")


def main():  # python -m trainer
    app(prog_name="trainer")


if __name__ == "__main__":
    sys.exit(main())
