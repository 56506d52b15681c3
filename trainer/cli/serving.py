"""`trainer export` and `trainer serve`: a trained model outside trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.cli.app import app, console
from trainer.cli.options import RUNS, Device, RunsRoot, choices, runs_root
from trainer.options import MAX_BYTES_MAX, MAX_PIXELS_MAX, WORKERS_MAX

ExportFormat = choices("ExportFormat", ("onnx", "torchscript"))  # trainer.serving.export.FORMATS, which imports torch


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run under runs/.",
                                          show_default=False)],
    format: Annotated[ExportFormat, typer.Option(
        "--format", help="onnx (needs `pip install 'trainer\\[export]'`) or torchscript.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="The file (or folder) to write \\[default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript]; its "
             "description goes to FILE.json beside it.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="Where the run's data is now, if it moved (the check uses its validation images).")] = None,
):
    """The run's model as ONNX or TorchScript (fp32, any batch size), checked against PyTorch before writing."""
    from trainer.runs.store import resolve_run
    from trainer.serving.export import export_run

    path, description = export_run(resolve_run(target, runs_root()), format.value, out, data)  # TRAINER_OUT too
    check = description["check"]
    console().print(f"checked on {check['images']} validation images: largest probability difference "
                    f"{check['max_probability_difference']:.3g} (limit {check['limit']:g})")
    print(path)


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run.",
                                          show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network (it has no "
                                           "authentication: put a reverse proxy in front).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, max=WORKERS_MAX, help="uvicorn worker processes, each with its own copy of the model.")] = 1,
    device: Device = "auto",
    max_bytes: Annotated[int, typer.Option(min=1, max=MAX_BYTES_MAX, help="Largest image file accepted, in bytes.")] = 20_000_000,
    max_pixels: Annotated[int, typer.Option(
        min=1, max=MAX_PIXELS_MAX, help="Largest image accepted, in pixels (width x height).")] = 40_000_000,
    max_request_pixels: Annotated[int, typer.Option(
        min=1, max=MAX_PIXELS_MAX, help="Largest total of decoded pixels over all the images of one request.")] = 80_000_000,
    max_batch: Annotated[int, typer.Option(min=1, max=1024, help="Images run through the model at once.")] = 16,
    out: RunsRoot = RUNS,
):
    """An HTTP prediction service: POST /predict (images), GET /health, and a page at / to drop images on."""
    from trainer.runs.store import resolve_run
    from trainer.serving.server import serve as run_server

    try:
        run_server(resolve_run(target, out), host, port, workers, device, max_bytes, max_pixels,
                   max_request_pixels, max_batch)
    except KeyboardInterrupt:
        pass  # uvicorn already stopped cleanly
