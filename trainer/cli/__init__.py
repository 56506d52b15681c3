"""The `trainer` command line: each command parses, calls one function of the package, and renders the result.
Errors become exit codes in one place (app.OneLineErrors). Heavy imports happen inside commands."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from trainer.cli.app import app, print_version
from trainer.cli import train, inspect, runs, serving, service, data, bench  # noqa: F401, E402  (each adds its commands)


@app.callback()
def options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=print_version, is_eager=True,
                                                    help="Print trainer's version and exit.")] = None,
):
    """fastai's image classification recipes as one command: fit, lr-find, interpret, predict, export, serve."""


def main():  # python -m trainer
    app(prog_name="trainer")


if __name__ == "__main__":
    sys.exit(main())
