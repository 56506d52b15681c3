"""`trainer bench`: the plain fastai notebook recipe vs `trainer fit` vs the model's own training step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.cli.app import app
from trainer.cli.options import AsJson, RecipeName
from trainer.options import BS_MAX, EPOCHS_MAX, SIZE_MAX


@app.command()
def bench(
    recipe: RecipeName,
    data: Annotated[str, typer.Option(help="Dataset folder or archive (e.g. ../shared/data/mnist_sample.tgz).",
                                      show_default=False)],
    epochs: Annotated[int, typer.Option(min=1, max=EPOCHS_MAX, help="Epochs for the reference and trainer rows.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (the same for every row).")] = "cpu",
    bs: Annotated[int, typer.Option(min=1, max=BS_MAX, help="Batch size for every row.")] = 64,
    rows: Annotated[str, typer.Option(
        help="Comma-separated rows: reference, trainer, trainer-nocache, floor, loader.")] = "reference,trainer,floor,loader",
    arch: Annotated[str, typer.Option(help="The model of every row (torchvision or timm, as for fit).")] = "resnet34",
    weights: Annotated[Optional[Path], typer.Option(
        help="Pretrained weights file: the reference row becomes the notebook with pretrained=True, trainer's row "
             "fine-tunes too.")] = None,
    size: Annotated[Optional[int], typer.Option(min=1, max=SIZE_MAX, help="Resize for the recipes that resize (pets, folder).")] = None,
    as_json: AsJson = False,
    json_out: Annotated[Optional[Path], typer.Option(help="Also write the table as JSON to this file.")] = None,
):
    """Benchmark: the plain fastai notebook recipe vs `trainer fit` vs the model's own training step."""
    from trainer.bench import check_bench, format_table, run_bench

    check_bench(recipe, rows, arch, weights)
    result = run_bench(recipe, data, epochs, device, bs, tuple(rows.split(",")), json_out, arch=arch,
                       weights=weights and str(weights), size=size)
    if as_json:
        import json

        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_table(result))
