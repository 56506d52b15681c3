"""Damaged run files (issues 27.1 and 28.2): each field of config.json, model.json and last.pth broken one way,
and bytes flipped in last.pth, best.pth and model.safetensors, against every command that reads the file: exit 2,
one line naming the file and the field, no traceback, and the run directory as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import SignalAt, class_folders, interrupted_fit, offline_data, one_line_error


class NotAllowed:
    """Pickled into last.pth by reference: a weights-only load refuses it (and runs nothing)."""


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def setting(*keys, value):
    def change(obj):
        target = obj
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return obj
    return change


def dropping(*keys):
    def change(obj):
        target = obj
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        return obj
    return change


CONFIG_CASES = {  # name: (change to config.json, what the error line must name)
    "dropout 2.0": (setting("options", "dropout", value=2.0), "--dropout"),
    "epochs a string": (setting("options", "epochs", value="3"), "--epochs"),
    "bs a list": (setting("options", "bs", value=[64]), "--bs"),
    "arch a number": (setting("options", "arch", value=5), "options.arch"),
    "options a list": (setting("options", value=[1, 2]), "options"),
    "no data": (dropping("data"), "data.path"),
    "recipe a number": (setting("recipe", "name", value=7), "recipe.name"),
    "an unknown option": (setting("options", "colour", value="red"), "options.colour"),
    "a list, not an object": (lambda c: [c], "not a JSON object"),
}
MODEL_CASES = {  # name: (change to model.json, what the error line must name)
    "size big": (setting("size", value="big"), "--size"),
    "dropout 2.0": (setting("dropout", value=2.0), "--dropout"),
    "classes a string": (setting("classes", value="0123456789"), "classes"),
    "classes numbers": (lambda m: {**m, "classes": list(range(10))}, "classes"),
    "no classes": (dropping("classes"), "classes"),
    "display_names short": (setting("display_names", value=["a"]), "display_names"),
    "normalize of 1 channel": (setting("normalize", value={"mean": [0.5], "std": [0.2]}), "normalize.mean"),
    "normalize a list": (setting("normalize", value=[0.5, 0.2]), "normalize"),
    "arch a number": (setting("arch", value=5), "arch"),
    "arch unknown": (setting("arch", value="resnet9000"), "arch"),
    "a list, not an object": (lambda m: [m], "not a JSON object"),
}


def trained_commands(run_dir: Path, tmp: Path) -> dict:
    image = tmp / "test" / "3" / "3_0.png"
    return {"interpret": ["interpret", run_dir], "predict": ["predict", run_dir, image],
            "evaluate": ["evaluate", run_dir, "--data", tmp / "test"],
            "export": ["export", run_dir, "--format", "torchscript"], "serve": ["serve", run_dir, "--port", "0"]}


def snapshot(run_dir: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.iterdir()}


def refused(trainer, args, run_dir: Path, *names: str) -> str:
    """The command's one error line, which names each of `names`; the run directory is left as it was."""
    before = snapshot(run_dir)
    line = one_line_error(trainer(*args, expect=2))
    for name in names:
        assert name in line, (args[0], name, line)
    assert snapshot(run_dir) == before, args[0]
    return line


@pytest.fixture
def trained(digits_run_copy, tmp_path):
    run_dir, _ = digits_run_copy
    class_folders(tmp_path / "test", range(10), 1)
    return run_dir, trained_commands(run_dir, tmp_path)


@pytest.fixture(scope="module")
def stopped_base(tmp_path_factory, trainer):
    """One digits run stopped by Ctrl-C after its first epoch: last.pth, best.pth, no model yet."""
    base = tmp_path_factory.mktemp("stopped")
    with offline_data(base) as mp:
        run_dir = interrupted_fit(trainer, mp, ["fit", "digits", "--epochs", "2", "--no-interpret", "--out",
                                                base / "runs"], SignalAt(epoch=1, training=False), base / "runs")
    return run_dir, base / "datasets"


@pytest.fixture
def stopped(stopped_base, tmp_path, monkeypatch):
    run_dir, data = stopped_base
    monkeypatch.setenv("TRAINER_DATA", str(data))
    copy = tmp_path / "runs" / "digits" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize("command", ["interpret", "evaluate", "export"])
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_damaged_config_json_is_one_line(case, command, trained, trainer):
    run_dir, commands = trained
    change, named = CONFIG_CASES[case]
    edit_json(run_dir / "config.json", change)
    refused(trainer, commands[command], run_dir, "config.json", named)


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_damaged_config_json_is_not_reported_as_no_checkpoint(case, stopped, trainer):
    change, named = CONFIG_CASES[case]
    edit_json(stopped / "config.json", change)
    line = refused(trainer, ["fit", "--resume", stopped], stopped, "config.json", named)
    assert "no checkpoint" not in line


@pytest.mark.parametrize("command", ["interpret", "predict", "evaluate", "export", "serve"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_damaged_model_json_is_one_line(case, command, trained, trainer):
    run_dir, commands = trained
    change, named = MODEL_CASES[case]
    edit_json(run_dir / "model.json", change)
    refused(trainer, commands[command], run_dir, "model.json", named)


def other_recipes_weights(state: dict) -> dict:
    head = max(k for k in state["model"] if k.endswith(".weight"))  # the last linear layer: 10 digits
    return {**state, "model": {**state["model"], head: torch.zeros(3, state["model"][head].shape[1])}}


LAST_CASES = {  # name: (what last.pth becomes, from its state; what the error line must say)
    "text": (lambda state: "not a checkpoint at all", "not a checkpoint"),
    "a list": (lambda state: [1, 2, 3], "list"),
    "another recipe's weights": (other_recipes_weights, "does not fit"),
    "no optimizer entry": (lambda state: {k: v for k, v in state.items() if k != "opt"}, "'opt'"),
    "a blocked pickle": (lambda state: {**state, "opt": NotAllowed()}, "weights-only"),
    "model not tensors": (lambda state: {**state, "model": {"w": "x"}}, "tensors"),
    "no metrics": (lambda state: {k: v for k, v in state.items() if k != "metrics"}, "'metrics'"),
}


@pytest.mark.parametrize("case", list(LAST_CASES))
def test_a_damaged_last_pth_is_one_line(case, stopped, trainer):
    """As a run from before hashes were recorded (no last.pth.sha256): the layout itself is checked."""
    make, said = LAST_CASES[case]
    path = stopped / "last.pth"
    state = torch.load(path, weights_only=True)
    (stopped / "last.pth.sha256").unlink()
    value = make(state)
    if isinstance(value, str):
        path.write_text(value)
    else:
        torch.save(value, path)
    line = refused(trainer, ["fit", "--resume", stopped], stopped, "last.pth", said)
    assert "no checkpoint" not in line


def flip(path: Path, nbytes: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 - nbytes // 2
    data[middle:middle + nbytes] = bytes(b ^ 0xFF for b in data[middle:middle + nbytes])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["last.pth", "best.pth"])
def test_flipped_bytes_in_a_checkpoint_are_refused(name, stopped, trainer):
    assert (stopped / f"{name}.sha256").is_file()
    flip(stopped / name)
    line = refused(trainer, ["fit", "--resume", stopped], stopped, f"{name} is damaged since it was written",
                   "sha256 mismatch")
    assert "restore it or retrain" in line


@pytest.mark.parametrize("command", ["interpret", "predict", "evaluate", "export", "serve"])
def test_flipped_bytes_in_the_model_are_refused(command, trained, trainer):
    run_dir, commands = trained
    flip(run_dir / "model.safetensors")
    refused(trainer, commands[command], run_dir, "model.safetensors is damaged since it was written", "sha256 mismatch")


def test_runs_written_before_hashes_still_load(trained, trainer):
    """No recorded hash (a run from before them): loaded as before."""
    run_dir, commands = trained
    (run_dir / "model.safetensors.sha256").unlink()
    rows = json.loads(trainer(*commands["predict"], "--json").stdout)
    assert len(rows) == 1 and rows[0]["predictions"]


def test_a_kill_between_the_file_and_its_hash_leaves_a_loadable_file(tmp_path):
    """The sidecar lists the new hash before the rename and only it after: whichever file a kill leaves, it
    is accepted, and a changed one is not."""
    from trainer import files

    path = tmp_path / "last.pth"
    with files.atomic_path(path, digest=True) as tmp:
        tmp.write_bytes(b"epoch 1")
    files.verify_digest(path)
    real_replace = files.os.replace

    def killed(source, target):  # the kill between the sidecar and the rename of the file itself
        if Path(target) == path:
            raise KeyboardInterrupt
        return real_replace(source, target)

    files.os.replace = killed
    try:
        with pytest.raises(KeyboardInterrupt), files.atomic_path(path, digest=True) as tmp:
            tmp.write_bytes(b"epoch 2")
    finally:
        files.os.replace = real_replace
    assert path.read_bytes() == b"epoch 1" and len(files.recorded_digests(path)) == 2
    files.verify_digest(path)  # the old file, still accepted
    with files.atomic_path(path, digest=True) as tmp:
        tmp.write_bytes(b"epoch 2")
    assert len(files.recorded_digests(path)) == 1
    files.verify_digest(path)
    path.write_bytes(b"epoch 3")
    from trainer.errors import BadInput

    with pytest.raises(BadInput, match="damaged since it was written"):
        files.verify_digest(path)


def test_the_listing_flags_a_damaged_config_and_never_stops(trained, trainer):
    run_dir, _ = trained
    edit_json(run_dir / "config.json", setting("options", "dropout", value=2.0))
    rows = json.loads(trainer("runs", "--out", run_dir.parent.parent, "--json").stdout)
    assert [r["state"] for r in rows if r["id"] == run_dir.name][0].startswith("damaged (config.json options: --dropout")
