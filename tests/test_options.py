"""One definition of each option: the CLI, the API, --nproc's relaunch and the docs read the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.config import FitConfig
from trainer.options import OPTIONS, as_args

# A value for every option, none of them a default, so a dropped or misspelt flag shows
EVERY = dict(data="somewhere", data_sha256="ab" * 32, size=96, valid_pct=0.25, cache=False, arch="resnet18",
             pretrained=True, weights="w.pth", dropout=0.3, init="kaiming", epochs=3, lr=0.002, bs=16, opt="sgd", wd=0.001,
             early_stop=2, save_best=True, seed=7, device="cpu", precision="fp32", workers=1, interpret=False,
             top_k=4, tensorboard=True, activation_stats=True, aug=True, min_scale=0.5, flip_vert=True,
             max_rotate=20.0, max_lighting=0.3, mixup=0.4, label_smoothing=0.1, labels="tags.csv", fn_col="file",
             label_col="tags", valid_col="held_out", label_delim=";", label_re="^(.+)_", threshold=0.3,
             mlflow="http://127.0.0.1:5000", name="exp-1")


def test_every_option_is_in_the_table_above():
    assert set(EVERY) == set(OPTIONS)


def test_the_default_weight_decays_are_fastais():
    """--print-config resolves --wd without importing fastai: the table must be fastai's own defaults."""
    import inspect

    from trainer.model.learner import optimizer
    from trainer.options import FASTAI_WD, OPTIMIZERS

    assert set(FASTAI_WD) == set(OPTIMIZERS)
    for name in OPTIMIZERS:
        assert FASTAI_WD[name] == inspect.signature(optimizer(name)).parameters["wd"].default, name


def test_the_relaunch_command_parses_back_to_the_same_options(trainer, monkeypatch):
    """`--nproc` starts each worker with `trainer fit RECIPE` + as_args(options): each option survives."""
    import trainer.training.fit as fit

    caught = []
    monkeypatch.setattr(fit, "fit", lambda cfg, events: caught.append(cfg) or (None, None))
    trainer("fit", "folder", *as_args(EVERY), "--out", "elsewhere")
    (cfg,) = caught
    assert cfg == FitConfig(recipe="folder", out="elsewhere", **EVERY)


def test_the_docs_list_every_option():
    table = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)", table, re.M))
    missing = {o.flag for o in OPTIONS.values()} - documented
    assert not missing, f"docs/cli.md's options table lacks {sorted(missing)}"


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.low is not None or o.high is not None])
def test_a_value_out_of_range_is_refused_alike_by_cli_and_api(name, trainer):
    """The CLI's line for an out-of-range value is FitConfig's, for each ranged option."""
    from trainer.errors import BadInput

    option = OPTIONS[name]
    bad = (option.high + 1) if option.high is not None and not option.high_open else \
        option.high if option.high is not None else (option.low - 1 if not option.low_open else option.low)
    bad = int(bad) if option.kind is int else float(bad)
    with pytest.raises(BadInput) as refused:
        FitConfig(recipe="digits", **{name: bad}).check()
    result = trainer("fit", "digits", option.flag, str(bad), expect=2)
    assert result.stderr.strip() == f"error: {refused.value}"


HUGE = str(2**64)  # past numpy's and sys.maxsize's ranges


@pytest.mark.parametrize("args, flag", [
    (["fit", "digits", "--seed", str(2**32)], "--seed"),
    (["fit", "digits", "--bs", HUGE], "--bs"),
    (["fit", "digits", "--epochs", HUGE], "--epochs"),
    (["fit", "digits", "--size", HUGE], "--size"),
    (["fit", "digits", "--workers", HUGE], "--workers"),
    (["fit", "digits", "--top-k", HUGE], "--top-k"),
    (["fit", "digits", "--early-stop", HUGE], "--early-stop"),
    (["lr-find", "digits", "--num-it", HUGE], "--num-it"),
    (["lr-find", "digits", "--bs", HUGE], "--bs"),
    (["predict", "digits", "x.png", "--bs", HUGE], "--bs"),
    (["predict", "digits", "x.png", "--top-k", HUGE], "--top-k"),
    (["interpret", "digits", "--bs", HUGE], "--bs"),
    (["interpret", "digits", "--top-k", HUGE], "--top-k"),
    (["evaluate", "digits", "--data", ".", "--bs", HUGE], "--bs"),
    (["serve", "digits", "--workers", HUGE], "--workers"),
    (["serve", "digits", "--port", HUGE], "--port"),
    (["serve", "digits", "--max-bytes", HUGE], "--max-bytes"),
    (["serve", "digits", "--max-pixels", HUGE], "--max-pixels"),
    (["bench", "digits", "--data", ".", "--bs", HUGE], "--bs"),
    (["bench", "digits", "--data", ".", "--epochs", HUGE], "--epochs"),
])
def test_every_integer_option_has_a_range(args, flag, trainer):
    """A huge value is a usage error naming the flag and its range (not numpy's or islice's OverflowError)."""
    from helpers import one_line_error

    line = one_line_error(trainer(*args, expect=2))
    assert line.startswith(f"error: {flag} must be a whole number of at most "), line
