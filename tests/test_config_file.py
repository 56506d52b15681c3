"""--config FILE and --print-config (trainer/config_file.py): a run repeated from its config.json, files written
by hand or by --print-config, flags over the file, and one-line refusals naming the file and the key."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import one_line_error, run_dir_of, run_python

from trainer.options import LR_FIND_OPTIONS, OPTIONS

QUICK = ("--epochs", "1", "--bs", "32", "--lr", "2e-3", "--seed", "3", "--no-interpret")


def printed(trainer, *args) -> dict:
    result = trainer(*args, "--print-config")
    return yaml.safe_load(result.stdout)


def test_a_run_config_json_repeats_the_run_exactly(trainer, isolated):
    first = run_dir_of(trainer("fit", "digits", *QUICK, "--dropout", "0.3", "--quiet"))
    again = run_dir_of(trainer("fit", "--config", first / "config.json", "--quiet"))
    assert again != first
    one, two = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert two["options"] == one["options"]  # every resolved option: schedule, model, data, machine
    assert two["asked"]["device"] == one["asked"]["device"] == "auto"  # the machine's own, resolved again here
    assert (again / "metrics.csv").read_text().splitlines()[1].split(",")[:-1] == \
        (first / "metrics.csv").read_text().splitlines()[1].split(",")[:-1]  # the same figures, all but the seconds
    # a run directory stands for its config.json; a flag given varies it
    varied = printed(trainer, "fit", "--config", first, "--epochs", "3", "--name", "longer")
    assert varied["epochs"] == 3 and varied["name"] == "longer" and varied["dropout"] == 0.3 and varied["lr"] == 2e-3
    assert varied["recipe"] == "digits" and varied["device"] == "auto"


def test_print_config_reads_back_to_itself_and_flags_override_the_file(trainer, isolated):
    shown = trainer("fit", "digits", "--epochs", "2", "--lr", "3e-3", "--aug", "--print-config").stdout
    assert shown.startswith("# trainer fit")
    values = yaml.safe_load(shown)
    assert list(values) == ["recipe", *OPTIONS, "out"]  # every option, in --help's order
    assert values["epochs"] == 2 and values["lr"] == 3e-3 and values["aug"] is True
    assert values["wd"] == 0.01 and values["max_rotate"] == 10  # the defaults filled in (fastai's, the recipe's)
    assert values["workers"] is None and values["device"] == "auto"  # the machine's: decided when it runs
    (isolated / "exp.yaml").write_text(shown)
    assert trainer("fit", "--config", "exp.yaml", "--print-config").stdout == shown
    assert printed(trainer, "fit", "--config", "exp.yaml", "--epochs", "5", "--no-aug")["epochs"] == 5
    assert not (isolated / "runs").exists()  # nothing ran


def test_a_hand_written_yaml_file(trainer, isolated, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (isolated / "exp.yaml").write_text("recipe: digits\nvalid-pct: 0.25\nlr: 1e-3   # YAML reads this as a string\n"
                                       "label_smoothing: 0.1\nout: elsewhere\nworkers: null\nmlflow: true\n")
    values = printed(trainer, "fit", "--config", "exp.yaml")
    assert values["valid_pct"] == 0.25 and values["lr"] == 1e-3 and values["label_smoothing"] == 0.1
    assert values["mlflow"] == (isolated / "mlruns").as_uri()  # `mlflow: true` is the flag alone: ./mlruns
    assert values["out"] == "elsewhere"
    assert printed(trainer, "fit", "--config", "exp.yaml", "--out", "mine")["out"] == "mine"  # the flag first
    assert printed(trainer, "fit", "mnist_sample", "--config", "exp.yaml")["recipe"] == "mnist_sample"
    # lr-find takes the data and model options of a fit file, not its schedule
    found = printed(trainer, "lr-find", "--config", "exp.yaml")
    assert list(found) == ["recipe", *[o for o in OPTIONS if o in LR_FIND_OPTIONS], "out"]
    assert found["valid_pct"] == 0.25 and "lr" not in found
    assert printed(trainer, "submit", "--config", "exp.yaml", "--bs", "16")["bs"] == 16  # no service needed


def test_a_json_file(trainer, isolated):
    (isolated / "exp.json").write_text(json.dumps({"recipe": "folder", "data": "photos", "labels": "labels.csv",
                                                   "fn_col": 0, "epochs": 4}))
    values = printed(trainer, "fit", "--config", "exp.json")
    assert values["epochs"] == 4 and values["fn_col"] == "0"  # a column index, as --fn-col 0 gives it


@pytest.mark.parametrize("text, words", [
    ("recipe: digits\nepoch: 3\n", ["exp.yaml: unknown key 'epoch'", "did you mean 'epochs'"]),
    ("recipe: digits\nepochs: 0\n", ["exp.yaml: 'epochs' must be a whole number of at least 1, got 0"]),
    ("recipe: digits\nepochs: two\n", ["exp.yaml: 'epochs' must be a whole number, got 'two'"]),
    ("recipe: digits\nlr: fast\n", ["exp.yaml: 'lr' must be a number (e.g. 1e-3), 'auto' or 'review', got 'fast'"]),
    ("recipe: digits\nprecision: fp8\n", ["exp.yaml: 'precision': unknown --precision 'fp8'", "bf16"]),
    ("recipe: digits\naug: maybe\n", ["exp.yaml: 'aug' must be true or false, got 'maybe'"]),
    ("recipe: digits\nvalid-pct: 0.2\nvalid_pct: 0.3\n", ["'valid_pct' and 'valid-pct' set the same option"]),
    ("recipe: digits\n  epochs: [\n", ["exp.yaml is not valid YAML (line 2"]),
    ("- epochs: 3\n", ["exp.yaml must hold a mapping of option: value", "got a list"]),
    ("", ["exp.yaml is empty"]),
    ("recipe: 3\n", ["exp.yaml: 'recipe' must be a recipe name, got 3"]),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(trainer, isolated, text, words):
    (isolated / "exp.yaml").write_text(text)
    line = one_line_error(trainer("fit", "--config", "exp.yaml", "--epochs", "2", expect=2))
    for word in words:
        assert word in line
    assert not (isolated / "runs").exists()


def test_config_file_refusals(trainer, isolated, digits_run):
    assert "--config missing.yaml does not exist" in one_line_error(
        trainer("fit", "--config", "missing.yaml", expect=2))
    assert "give one of them" in one_line_error(
        trainer("fit", "--config", digits_run[0], "--resume", digits_run[0], expect=2))
    (isolated / "exp.yaml").write_text("epochs: 2\n")
    assert "needs a RECIPE" in one_line_error(trainer("lr-find", "--config", "exp.yaml", expect=2))
    config = json.loads((digits_run[0] / "config.json").read_text())
    config["options"]["epochs"] = "many"  # a hand-edited config.json: read as --resume reads it
    (isolated / "edited.json").write_text(json.dumps(config))
    assert "edited.json is damaged: options: --epochs must be a whole number" in one_line_error(
        trainer("fit", "--config", "edited.json", expect=2))


def test_print_config_imports_no_torch_and_reads_no_data(isolated):
    code = ("import json, sys\nfrom trainer.cli import app\n"
            "try:\n    app(['fit', 'folder', '--data', 'no/such/folder', '--print-config'], prog_name='trainer')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(json.dumps([code, sorted(m for m in ('torch', 'fastai', 'torchvision') if m in sys.modules)]))")
    result = run_python(code)
    *shown, last = result.stdout.strip().splitlines()
    assert json.loads(last) == [0, []], result.stderr
    assert yaml.safe_load("\n".join(shown))["data"] == "no/such/folder"
