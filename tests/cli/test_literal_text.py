"""User values print literally: no rich markup ([bold]) or emoji (:thumbs_up:) in error lines or table cells;
and the smaller refusals: non-finite learning rates."""

from __future__ import annotations

import json

import pytest
from helpers import one_line_error

ODD = "[bold]x[/bold]:thumbs_up:"


def test_an_error_line_prints_the_value_literally(trainer):
    line = one_line_error(trainer("fit", "digits", "--device", f"cuda{ODD}", expect=2))
    assert f"'cuda{ODD}'" in line and "\N{THUMBS UP SIGN}" not in line


def test_table_cells_print_user_values_literally(trainer, isolated, monkeypatch):
    root = isolated / ODD  # a data root, a runs folder and a run id with markup and emoji in their names
    (root / "mnist_png" / "training").mkdir(parents=True)
    (root / "mnist_png" / "testing").mkdir()
    monkeypatch.setenv("TRAINER_DATA", ODD)  # relative: a short cell, not wrapped
    listed = trainer("datasets").stdout
    assert f"{ODD}/mnist_png" in listed.replace("\n", "") and "\N{THUMBS UP SIGN}" not in listed

    run = root / "runs" / "digits" / f"20260101-000000{ODD}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run": run.name, "command": "fit", "options": {"arch": ODD}}))
    shown = trainer("runs", "--out", root / "runs").stdout
    assert ODD in shown and "\N{THUMBS UP SIGN}" not in shown


@pytest.mark.parametrize("args, message", [
    (("lr-find", "digits", "--end-lr", "inf"), "--end-lr must be a finite number, got inf"),
    (("lr-find", "digits", "--end-lr", "nan"), "--end-lr must be a finite number, got nan"),
    (("lr-find", "digits", "--start-lr", "nan"), "--start-lr must be a finite number, got nan"),
    (("lr-find", "digits", "--start-lr", "-inf"), "--start-lr must be a finite number, got -inf"),
    (("fit", "digits", "--lr", "inf"), "--lr must be"),
    (("fit", "digits", "--lr", "nan"), "--lr must be"),
])
def test_non_finite_rates_are_refused(trainer, isolated, args, message):
    line = one_line_error(trainer(*args, "--out", isolated / "runs", expect=2))
    assert message in line
    assert not (isolated / "runs").exists()
