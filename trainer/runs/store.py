"""The store of run directories, runs/<recipe>/<id>/: creating one, finding the one a user means, `latest`,
and the environment a run records."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from trainer.errors import BadInput


def check_writable(out: Path) -> None:
    """Fail before training, not after, when the output folder cannot be written (creating nothing)."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        why = f"{existing} is a file"
    elif read_only(existing):
        why = f"{existing} is on a read-only filesystem"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"no write permission on {existing}"
    else:
        return
    raise BadInput(f"--out {out} cannot be written ({why}); choose a writable folder with --out")


def read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows: os.access decides
        return False


RUN_ID = re.compile(r"\d{8}-\d{6}(-\d+)?")  # a run's start time, the directory name of a run without --name


def new_run_dir(out: Path, recipe: str, name: str | None = None) -> Path:
    """A fresh runs/<recipe>/<id>/ where ids sort by start time and never collide, or runs/<recipe>/<name>/.

    mkdir without exist_ok is the lock: two processes starting in the same second get -2, -3...; two runs
    given the same --name: the second is refused (with the next free name).
    """
    parent = out / recipe
    parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        try:
            (parent / name).mkdir()
        except FileExistsError:
            raise BadInput(name_taken(parent, name)) from None
        return parent / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        run_dir = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise RuntimeError(f"could not create a run directory under {parent}")


def check_run_name(name: str) -> None:
    """A --name that cannot be mistaken for what the commands that take a run also accept (an id, `latest`, a
    recipe name); its characters are checked by the option's pattern (options.RUN_NAME)."""
    from trainer.recipes import RECIPES

    if name == "latest" or name in RECIPES:
        what = "the word" if name == "latest" else "a recipe's name, which"
        raise BadInput(f"--name {name} is {what} the commands that take a run read as the newest run: choose "
                       f"another, e.g. --name {name}-1")
    if RUN_ID.fullmatch(name):
        raise BadInput(f"--name {name} has the form of a run id (a start time): choose a name with a letter in it, "
                       f"e.g. --name run-{name}")


def check_name_free(out: Path, recipe: str, name: str | None) -> None:
    """Before training: a --name already taken under OUT/<recipe>/ is refused, with the next free one."""
    if name is not None and (out / recipe / name).exists():
        raise BadInput(name_taken(out / recipe, name))


def name_taken(parent: Path, name: str) -> str:
    base, n = name, 2
    if (m := re.fullmatch(r"(.*)-(\d+)", name)) and m.group(1):  # "resnet-2" taken: suggest "resnet-3"
        base, n = m.group(1), int(m.group(2)) + 1
    while (parent / f"{base}-{n}").exists():
        n += 1
    return (f"--name {name}: {parent / name} already exists (`trainer runs {parent.name}`); choose another name, "
            f"e.g. --name {base}-{n}")


def point_latest(parent: Path, run_dir: Path) -> None:
    """runs/<recipe>/latest -> the newest run that holds a model (replaced atomically when one is exported;
    best effort where links are not allowed). An lr-find run or a failed one never moves it."""
    tmp = parent / f".latest-{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, parent / "latest")


def run_dirs(out: Path, recipe: str) -> list[Path]:
    """Run directories of a recipe, oldest first: those named by their start time, and named ones (--name)."""
    parent = out / recipe
    if not parent.is_dir():
        return []
    runs = [d for d in parent.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")
            and (RUN_ID.fullmatch(d.name) or (d / "config.json").is_file())]
    return sorted(runs, key=run_order)


def run_order(run_dir: Path) -> tuple[str, int, str]:
    """By start time: run ids are start times ("20261125-163012" < "20261125-163012-2" < "...-10"); a named run's
    is its config.json's "started" (else the folder's time), so names and ids interleave as they ran."""
    name = run_dir.name
    if RUN_ID.fullmatch(name):
        return name[:15], int(name[16:]) if name[16:] else 1, ""
    return started_stamp(run_dir), 0, name


def started_stamp(run_dir: Path) -> str:
    """A named run's start as a run id writes it (local time, "%Y%m%d-%H%M%S")."""
    import json
    from datetime import datetime

    try:
        started = json.loads((run_dir / "config.json").read_text())["started"]
        return datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").astimezone().strftime("%Y%m%d-%H%M%S")
    except (OSError, ValueError, KeyError, TypeError):  # no config yet, or damaged: the folder's own time
        try:
            return time.strftime("%Y%m%d-%H%M%S", time.localtime(run_dir.stat().st_mtime))
        except OSError:
            return ""


def environment() -> dict:
    """Versions and code revision, so a run can be reproduced a month later."""
    import fastai
    import torch
    import torchvision

    from trainer import __version__

    return {
        "trainer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fastai": fastai.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def git_commit() -> str | None:
    """The trainer checkout's commit (with '-dirty' for local changes), if it is a git checkout."""
    source = Path(__file__).resolve().parents[2]  # the checkout: trainer/runs/store.py
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_run(target: str, out: Path, need_model: bool = True) -> Path:
    """The run directory a user means, the same way for every command that takes a run: a path, a run id
    (under OUT/<recipe>/), `latest` (the newest run with a model, of any recipe), or a recipe name (its
    newest run with a model). `need_model=False` (runs show, report) accepts runs without one."""
    from trainer.errors import did_you_mean
    from trainer.recipes import RECIPES
    from trainer.runs import rundir
    from trainer.runs.rundir import has_model

    path = Path(target)
    if path.is_dir():
        if need_model and not has_model(path):
            config, _ = rundir.read_json(path / rundir.CONFIG)  # only for the hint: never stops at damage
            recipe = ((config or {}).get("recipe") or {}).get("name", "RECIPE") if isinstance((config or {}).get("recipe"), dict) else "RECIPE"
            raise BadInput(f"{path} holds no trained model (model.safetensors); run `trainer fit {recipe}` "
                           f"and use the run directory it prints")
        return path
    recipes = sorted(d.name for d in out.iterdir() if d.is_dir()) if out.is_dir() else []
    if target == "latest" or target in RECIPES or target in recipes:
        found = [d for r in ([target] if target != "latest" else recipes) for d in run_dirs(out, r)]
        found = sorted((d for d in found if has_model(d) or not need_model), key=run_order)
        if not found:
            which = "" if target == "latest" else f" of '{target}'"
            raise BadInput(f"no {'trained ' if need_model else ''}run{which} under {out}/; run `trainer fit "
                           f"{target if target in RECIPES else 'RECIPE'}` first (or pass a run directory, or --out "
                           f"where your runs are)")
        return found[-1]
    matches = [out / r / target for r in recipes if (out / r / target).is_dir()]
    if len(matches) == 1:
        return resolve_run(str(matches[0]), out, need_model)
    if len(matches) > 1:
        raise BadInput(f"run id {target} exists for several recipes: give the path, e.g. {matches[0]}")
    raise BadInput(f"no run '{target}' under {out}/{did_you_mean(target, RECIPES)}: give a run directory "
                   f"(runs/<recipe>/<id>), a run id, 'latest' or a recipe name (see `trainer runs`)")
