"""What a job is: a submission checked with the CLI's own option definitions, and the `trainer` command it runs.

A submission names options by their CLI names without dashes (`{"epochs": 2, "top_k": 5}`), as the Python
API does; each value is checked by the same definitions (trainer.options) and FitConfig.check, so a bad value
is refused with the line `trainer fit` would print. The data is never a server path: an uploaded dataset's id,
a folder under the service's data root, or the recipe's own data.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import BadInput, did_you_mean
from trainer.runs import rundir
from trainer.service import store as S
from trainer.options import (LR_FIND_OPTIONS, LR_FIND_TAKES_NO_LR, MLFLOW_DEFAULT, NUM_IT_MAX, OPTIONS, as_args,
                             check_lr_processes)

COMMANDS = ("fit", "lr-find")
# lr-find's own options (trainer.cli.train's lr-find), with their ranges
LR_FIND_EXTRA = {"start_lr": (float, 0.0, None), "end_lr": (float, 0.0, None), "num_it": (int, 10, NUM_IT_MAX)}
SERVICE_DEVICES = ("auto", "cpu", "cuda")  # the service picks the GPUs: cuda:N would name one it did not give


@dataclass(frozen=True)
class Submission:
    command: str
    recipe: str
    options: dict  # only those set, by CLI names, checked
    data: str | None  # the folder it trains on, or None for the recipe's own data
    dataset: str | None
    nproc: int
    dataset_version: int | None = None  # the version of `dataset` it trains on


def typed(name: str, kind: type, value):
    """A JSON value as the option's type, or the CLI's line for a value of the wrong kind."""
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise BadInput(f"{flag} is a switch: give true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BadInput(f"{flag} must be a whole number, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if name == "lr" and isinstance(value, str):
            from trainer.options import parse_lr

            return parse_lr(value)  # 'auto', 'review' (the lr_find gate), or a number as the CLI passes it on
        raise BadInput(f"{flag} must be a number, got {value!r}")
    if not isinstance(value, str):
        raise BadInput(f"{flag} must be text, got {value!r}")
    return no_nul(flag, value)


def no_nul(what: str, value: str) -> str:
    """Text that can become a command-line word and a stored value: a NUL can be neither."""
    if "\0" in value:
        raise BadInput(f"{what} holds a NUL character; send it without one")
    return value


def check_submission(body: dict, *, data_root: Path, dataset_path, devices_total: int, device_kind: str,
                     more_devices: str = "start the service with more --devices/--slots") -> Submission:
    """A submission checked, or BadInput with one line (HTTP 422). `dataset_path(id, version)`: (the folder of that
    version of an uploaded dataset, its number; the newest when version is None), or None if there is none."""
    from trainer.api import fit_config
    from trainer.recipes import get_recipe

    unknown = sorted(set(body) - {"command", "recipe", "options", "data", "dataset", "dataset_version", "nproc"})
    if unknown:
        raise BadInput(f"unknown field '{unknown[0]}'; a job has command, recipe, options, data, dataset, "
                       f"dataset_version, nproc")
    command = body.get("command") or "fit"
    if command not in COMMANDS:
        raise BadInput(f"unknown command '{command}'{did_you_mean(str(command), COMMANDS)}; use fit or lr-find")
    recipe = body.get("recipe")
    if not isinstance(recipe, str) or not recipe:
        raise BadInput("a job needs a recipe (see `trainer datasets`), e.g. {\"recipe\": \"digits\"}")
    get_recipe(recipe)
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadInput("options must be an object of option names and values, e.g. {\"epochs\": 2}")
    allowed = tuple(OPTIONS) if command == "fit" else (*LR_FIND_OPTIONS, *LR_FIND_EXTRA)
    if command == "lr-find" and options.get("lr") is not None:
        raise BadInput(LR_FIND_TAKES_NO_LR)
    for name in ("data", "weights"):  # paths on the server: only through the data root or an upload
        if name in options:
            raise BadInput(f"a job cannot name a server path in options.{name}; give \"dataset\" (an uploaded "
                           f"archive's id) or \"data\" (a folder under the service's data root)")
    mlflow = options.get("mlflow")  # a folder or a database would be a server path too
    if isinstance(mlflow, str) and mlflow != MLFLOW_DEFAULT and not re.match(r"https?://", mlflow):
        raise BadInput(f"a job cannot name a server path in options.mlflow ('{mlflow}'); give an http(s):// "
                       f"tracking server, or \"{MLFLOW_DEFAULT}\" for the service's own (MLFLOW_TRACKING_URI, "
                       f"else its ./mlruns)")
    labels = options.get("labels")
    if isinstance(labels, str) and (Path(labels).is_absolute() or ".." in Path(labels).parts):
        raise BadInput("options.labels names the CSV inside the job's dataset, by a path relative to it (e.g. "
                       "labels.csv), not a server path")
    checked = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in LR_FIND_EXTRA and command == "lr-find":
            kind, low, high = LR_FIND_EXTRA[name]
            value = typed(name, kind, value)
            if value <= low and name != "num_it" or name == "num_it" and value < low or high and value > high:
                raise BadInput(f"--{name.replace('_', '-')} is out of range, got {value}")
            checked[name] = value
        elif name in OPTIONS:
            checked[name] = typed(name, OPTIONS[name].kind, value)
        else:
            checked[name] = value  # fit_config names it as unknown, with the options there are
    fit_config(recipe, {k: v for k, v in checked.items() if k not in LR_FIND_EXTRA}, allowed=allowed)
    device = checked.get("device")
    if device is not None and device not in SERVICE_DEVICES:
        raise BadInput(f"--device {device}: the service gives each job its devices; use auto, cpu or cuda")
    nproc = body.get("nproc")
    if nproc is not None:
        nproc = typed("nproc", int, nproc)
        if nproc < 1:
            raise BadInput(f"--nproc must be a whole number of at least 1, got {nproc}")
        if command == "lr-find" and nproc > 1:
            raise BadInput("lr-find runs in one process: drop --nproc")
        check_lr_processes(checked.get("lr"), nproc)  # --lr auto/review: lr_find in one process
    needs = nproc or 1
    if needs > devices_total:
        raise BadInput(f"the job asks for {needs} devices (--nproc {needs}) but this service has {devices_total} "
                       f"({device_kind}): ask for at most {devices_total}, or {more_devices}")
    data, dataset = body.get("data"), body.get("dataset")
    if data is not None and dataset is not None:
        raise BadInput("give either \"data\" (a folder under the data root) or \"dataset\" (an upload), not both")
    version = body.get("dataset_version")
    if version is not None:
        version = typed("dataset_version", int, version)
        if version < 1 or dataset is None:
            raise BadInput("dataset_version must be a version (1, 2, ...) of the job's \"dataset\"")
    folder = None
    if dataset is not None:
        found = dataset_path(no_nul('"dataset"', str(dataset)), version)
        if found is None:
            raise BadInput(f"no uploaded dataset '{dataset}'; upload it with POST /datasets (or `trainer submit "
                           f"--data ARCHIVE`) and use the id it returns" if version is None else
                           f"dataset '{dataset}' has no version {version}; GET /datasets/{dataset}/versions "
                           f"lists them")
        folder, version = Path(found[0]), found[1]
    elif data is not None:
        folder = under_root(data_root, data)
    if folder is not None:
        from trainer.data.source import dataset_root, layout_problems

        from types import SimpleNamespace

        rec = get_recipe(recipe).configured(SimpleNamespace(**checked))  # --labels, --label-re: their layout
        shown = f"dataset {dataset}" if dataset is not None else f"'{data}'"
        problems = layout_problems(rec, folder)
        try:
            problems = problems and layout_problems(rec, dataset_root(rec, folder))
        except BadInput:
            pass
        if problems:
            raise BadInput(f"{shown} does not fit recipe {recipe}: {problems[0].replace(str(folder), 'it')}; "
                           f"expected {rec.layout}")
    return Submission(command, recipe, checked, str(folder) if folder else None,
                      str(dataset) if dataset is not None else None, needs, version)


def under_root(data_root: Path, name) -> Path:
    """A folder named relative to the data root, which it must stay inside (no `..`, no absolute path, no link
    out)."""
    if not isinstance(name, str) or not name.strip():
        raise BadInput("\"data\" must name a folder under the service's data root, e.g. \"photos\"")
    no_nul('"data"', name)
    root = data_root.resolve()
    folder = (root / name).resolve()
    if Path(name).is_absolute() or not folder.is_relative_to(root) or folder == root:
        raise BadInput(f"\"data\": '{name}' is not a folder under the service's data root; name one inside it "
                       f"(see GET /datasets)")
    if not folder.is_dir():
        raise BadInput(f"\"data\": no folder '{name}' under the service's data root; upload an archive instead, "
                       f"or put the folder there")
    return folder


def command_line(job: dict, runs: Path, resume_dir: Path | None) -> list[str]:
    """The `trainer` command a job's process runs: a fresh fit (or lr-find), or `fit --resume` of its run."""
    python = [sys.executable, "-m", "trainer"]
    nproc = ["--nproc", str(job["nproc"])] if job["nproc"] > 1 else []
    if resume_dir is not None:
        machine = {k: job["options"][k] for k in ("device", "precision") if job["options"].get(k) is not None}
        return [*python, "fit", "--resume", str(resume_dir), *as_args(machine), *nproc, "--out", str(runs)]
    options = {k: v for k, v in job["options"].items() if k not in LR_FIND_EXTRA}
    words = [*python, job["command"], job["recipe"], *as_args(options)]
    for name in LR_FIND_EXTRA:
        if name in job["options"]:
            words += ["--" + name.replace("_", "-"), str(job["options"][name])]
    if job["data"]:
        words += ["--data", job["data"]]
    return [*words, *nproc, "--out", str(runs)]


def trained_run(job: dict) -> Path | None:
    """The run directory of a fit job that succeeded and holds its model; None for any other job."""
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    if job["command"] != "fit" or job["state"] != S.SUCCEEDED or run_dir is None:
        return None
    return run_dir if (run_dir / rundir.WEIGHTS).is_file() else None
