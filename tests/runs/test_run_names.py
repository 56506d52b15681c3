"""--name: runs/<recipe>/<name>, refused when taken (with the next free name), resolved by every command that takes
a run; TRAINER_OUT and TRAINER_DEVICE where --out and --device are not given."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import one_line_error, run_dir_of

from trainer.runs.store import run_dirs, run_order


def test_a_named_run_is_found_by_its_name(trainer, isolated, digits_run):
    named = isolated / "runs" / "digits" / "baseline"
    shutil.copytree(digits_run[0], named)  # a finished run under a name, as `--name baseline` writes it
    assert json.loads(trainer("runs", "show", "baseline", "--json").stdout)["path"] == "runs/digits/baseline"
    assert [row["id"] for row in json.loads(trainer("runs", "--json").stdout)] == ["baseline"]
    (named / "confusion_matrix.png").unlink()
    trainer("interpret", "baseline")
    assert (named / "confusion_matrix.png").is_file()
    assert trainer("runs", "show", "digits", "--json").stdout == trainer("runs", "show", "baseline", "--json").stdout


def test_names_and_ids_sort_by_start_time(isolated):
    parent = isolated / "runs" / "digits"
    for name, started in (("20261201-100000", None), ("middle", "2026-12-01T11:00:00+0000"),
                          ("20261201-120000", None), ("first", "2026-12-01T09:00:00+0000")):
        (parent / name).mkdir(parents=True)
        if started:
            (parent / name / "config.json").write_text(json.dumps({"started": started}))
    (parent / "notes").mkdir()  # a folder that is not a run: no config.json, not a run id
    order = [d.name for d in run_dirs(isolated / "runs", "digits")]
    utc = [run_order(d)[0] for d in run_dirs(isolated / "runs", "digits")]
    assert sorted(utc) == utc and "notes" not in order and set(order) == {"20261201-100000", "middle",
                                                                             "20261201-120000", "first"}


def test_a_taken_name_is_refused_before_training_with_the_next_free_one(trainer, isolated):
    for name in ("exp", "exp-2"):
        (isolated / "runs" / "digits" / name).mkdir(parents=True)
    line = one_line_error(trainer("fit", "digits", "--name", "exp", expect=2))
    assert "--name exp" in line and "already exists" in line and "--name exp-3" in line
    line = one_line_error(trainer("fit", "digits", "--name", "exp-2", expect=2))
    assert "--name exp-3" in line
    assert sorted(p.name for p in (isolated / "runs" / "digits").iterdir()) == ["exp", "exp-2"]  # nothing written
    assert not (isolated / "datasets").exists()  # refused before the data was read (digits writes it there)


@pytest.mark.parametrize("name, words", [("latest", "the newest run"), ("pets", "a recipe's name"),
                                         ("20261201-101010", "a run id"), ("a/b", "letters, digits"),
                                         ("../up", "letters, digits"), ("-x", "letters, digits")])
def test_names_that_would_be_read_as_something_else_are_refused(trainer, isolated, name, words):
    assert words in one_line_error(trainer("fit", "digits", f"--name={name}", expect=2))


def test_a_named_fit_and_the_environment_defaults(trainer, isolated, monkeypatch):
    monkeypatch.setenv("TRAINER_OUT", str(isolated / "elsewhere"))
    monkeypatch.setenv("TRAINER_DEVICE", "cpu")
    run = run_dir_of(trainer("fit", "digits", "--epochs", "1", "--no-interpret", "--name", "quick", "--quiet"))
    assert run == isolated / "elsewhere" / "digits" / "quick"
    config = json.loads((run / "config.json").read_text())
    assert config["run"] == "quick" and config["options"]["name"] == "quick"
    assert config["asked"]["device"] == "cpu"  # TRAINER_DEVICE, as if --device cpu was given
    assert [row["id"] for row in json.loads(trainer("runs", "--json").stdout)] == ["quick"]  # TRAINER_OUT
    assert json.loads(trainer("runs", "show", "quick", "--json").stdout)["path"] == str(run)
    trainer("export", "quick", "--format", "torchscript")  # export has no --out of runs: TRAINER_OUT finds it
    assert (run / "model.torchscript").is_file()
    assert "--name quick-2" in one_line_error(trainer("fit", "digits", "--name", "quick", expect=2))
    monkeypatch.setenv("TRAINER_DEVICE", "tpu")
    assert "unknown --device 'tpu'" in one_line_error(trainer("fit", "digits", expect=2))


def test_help_names_the_environment_variables(trainer):
    shown = trainer("fit", "--help").stdout
    for variable in ("TRAINER_OUT", "TRAINER_DEVICE", "TRAINER_DATA"):
        assert variable in shown
    assert "TRAINER_OUT" in trainer("runs", "list", "--help").stdout and "TRAINER_DEVICE" in trainer("predict", "--help").stdout
