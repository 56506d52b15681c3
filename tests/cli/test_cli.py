"""The command line's own behaviour: --version, the `runs` sub-commands, typer's checks of choices and ranges
reported as one line, and the output options that a resumed run takes from its config. No training here."""

from __future__ import annotations

import json
import re
from importlib.metadata import version

import pytest
from helpers import one_line_error

from trainer.config import FitConfig


def test_version_is_the_installed_package_version(trainer):
    assert trainer("--version").stdout.strip() == f"trainer {version('trainer')}"


@pytest.mark.parametrize("args, words", [
    (["fit", "digits", "--precision", "fp8"], "unknown --precision 'fp8'; use one of auto, fp32, fp16, bf16"),
    (["fit", "digits", "--opt", "adma"], "unknown --opt 'adma' (did you mean 'adam'?); use one of adam, sgd"),
    (["fit", "digits", "--init", "he"], "unknown --init 'he'; use one of default, kaiming, xavier"),
    (["lr-find", "digits", "--precision", "bf61"], "unknown --precision 'bf61' (did you mean 'bf16'?)"),
    (["export", "digits", "--format", "tflite"], "unknown --format 'tflite'; use one of onnx, torchscript"),
    (["fit", "digits", "--epochs", "0"], "--epochs must be a whole number of at least 1, got 0"),
    (["fit", "digits", "--top-k", "-2"], "--top-k must be a whole number of at least 1, got -2"),
    (["fit", "digits", "--workers", "-1"], "--workers must be a whole number of at least 0, got -1"),
    (["fit", "digits", "--bs", "eight"], "--bs must be a whole number, got 'eight'"),
    (["fit", "digits", "--wd", "much"], "--wd must be a number, got 'much'"),
    (["lr-find", "digits", "--num-it", "5"], "--num-it must be a whole number of at least 10, got 5"),
    (["serve", "digits", "--port", "70000"], "--port must be a whole number of at most 65535, got 70000"),
    (["predict", "digits", "x.png", "--top-k", "0"], "--top-k must be a whole number of at least 1, got 0"),
    (["bench", "digits", "--data", ".", "--epochs", "0"], "--epochs must be a whole number of at least 1, got 0"),
    (["interpret"], "Missing argument"),
    (["fitt", "digits"], "Did you mean 'fit'?"),
])
def test_usage_errors_are_one_line(trainer, isolated, args, words):
    """typer refuses these before any command runs; they read like trainer's own checks: one line, exit 2."""
    assert words in one_line_error(trainer(*args, expect=2))
    assert not (isolated / "runs").exists()


def test_fit_help_groups_the_options(trainer, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = trainer("fit", "--help").stdout
    panels = re.findall(r"^╭─ (\w+) ", out, flags=re.MULTILINE)
    assert panels == ["Arguments", "Options", "Data", "Model", "Training", "Augmentation", "Hardware",
                      "Outputs", "Config"]
    assert "adam|sgd|rmsprop|lamb|ranger" in out and "auto|fp32|fp16|bf16" in out


def make_run(out, run_id: str, **options):
    run_dir = out / "digits" / run_id
    run_dir.mkdir(parents=True)
    config = {"recipe": {"name": "digits"}, "command": "fit", "options": FitConfig("digits", **options).to_dict(),
              "data": {"path": str(out / "data")}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_runs_is_a_group_that_lists_by_default(trainer, isolated):
    out = isolated / "runs"
    make_run(out, "20261101-000000")
    listed = [r["id"] for r in json.loads(trainer("runs", "--out", out, "--json").stdout)]
    assert listed == ["20261101-000000"]
    assert [r["id"] for r in json.loads(trainer("runs", "list", "digits", "--out", out, "--json").stdout)] == listed
    assert json.loads(trainer("runs", "show", "digits", "--out", out, "--json").stdout)["id"] == "20261101-000000"
    assert "no runs under" in trainer("runs", "mnist", "--out", out).stdout
    help_text = trainer("runs", "--help").stdout
    assert "list" in help_text and "show" in help_text
    assert "Missing argument" in one_line_error(trainer("runs", "show", expect=2))


def test_resume_takes_the_output_options_from_the_run(trainer, isolated):
    """interpret, top_k and tensorboard are the run's options: repeating them with --resume is fine, changing
    them is refused (before any checkpoint is read)."""
    run_dir = make_run(isolated / "runs", "20261101-000000", interpret=False, top_k=4, tensorboard=True)
    for same in (["--no-interpret"], ["--top-k", "4"], ["--tensorboard"], []):
        assert "has no checkpoint" in one_line_error(trainer("fit", "--resume", run_dir, *same, expect=2))
    for changed, words in ((["--interpret"], "it has --no-interpret; drop --interpret"),
                           (["--top-k", "9"], "it has --top-k 4; drop --top-k 9"),
                           (["--no-tensorboard"], "it has --tensorboard; drop --no-tensorboard")):
        assert words in one_line_error(trainer("fit", "--resume", run_dir, *changed, expect=2))


def test_resume_config_reads_the_options_it_records():
    from trainer.config import resume_config

    options = FitConfig("digits", interpret=False, top_k=4, tensorboard=True).to_dict()
    config = {"options": options, "data": {"path": "/data"}}
    cfg = resume_config(config, device="cpu", interpret=False, top_k=None)
    assert (cfg.interpret, cfg.top_k, cfg.tensorboard, cfg.device) == (False, 4, True, "cpu")
    # a run from before these were options: tensorboard was kept beside them, the others take their defaults
    old = {"options": {k: v for k, v in options.items() if k not in ("interpret", "top_k", "tensorboard")},
           "tensorboard": True, "data": {"path": "/data"}}
    cfg = resume_config(old, interpret=False)
    assert (cfg.interpret, cfg.top_k, cfg.tensorboard) == (False, None, True)
