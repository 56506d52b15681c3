"""`trainer runs`: past runs under --out, newest first, read from their JSON files only.

No torch or fastai here: listing must stay instant. A run directory with missing, partial or
corrupt files is still listed, with its state saying what is wrong; it never stops the listing.
"""

from __future__ import annotations

from pathlib import Path

from trainer.runs import rundir
from trainer.runs.rundir import last_metrics, read_json
from trainer.runs.store import run_dirs, run_order


def run_state(run_dir: Path, config_problem: str | None, summary: dict | None, summary_problem: str | None) -> str:
    if config_problem:
        return f"damaged (config.json {config_problem})"
    if summary is not None:
        return "done"
    if summary_problem == "unreadable":
        return "damaged (summary.json unreadable)"
    if (run_dir / rundir.ERROR_LOG).is_file():
        return "failed"
    if (run_dir / rundir.LR_FIND_JSON).is_file():
        return "lr-find"
    if (run_dir / rundir.CHECKPOINT).is_file():
        return "stopped (resumable)"
    return "incomplete"


def config_damage(run_dir: Path) -> str | None:
    """What rundir.read_config finds wrong in a run's config.json ('options: --dropout must be ...'), or None."""
    from trainer.errors import BadInput

    try:
        rundir.read_config(run_dir)
    except BadInput as e:
        return str(e).split(" is damaged: ", 1)[-1].split("; restore", 1)[0]
    return None


def describe(run_dir: Path) -> dict:
    """One row of the listing; every field may be None when its file is missing."""
    config, config_problem = read_json(run_dir / rundir.CONFIG)
    if config is not None:  # readable JSON: is it what a run writes? (the validating reader, never stopping)
        config_problem = config_damage(run_dir)
    summary, summary_problem = read_json(run_dir / rundir.SUMMARY)
    config = config or {}
    options = config.get("options", {}) if isinstance(config.get("options"), dict) else {}
    final = (summary or {}).get("final") or last_metrics(run_dir)
    return {
        "id": run_dir.name,
        "recipe": run_dir.parent.name,
        "path": str(run_dir),
        "state": run_state(run_dir, config_problem, summary, summary_problem),
        "command": config.get("command"),
        "arch": options.get("arch"),
        "epochs": options.get("epochs"),
        "pretrained": options.get("pretrained"),
        "device": (config.get("device") or {}).get("name"),
        "world_size": (config.get("distributed") or {}).get("world_size", 1) if config else None,
        "changes": changes(options, config),
        "final": final,
        "wall_seconds": (summary or {}).get("wall_seconds"),
        "started": config.get("started"),
        "baseline": (summary or {}).get("baseline"),
    }


# Options whose defaults are fixed: a run that set them differently says so in the listing.
DEFAULTS = {"opt": "adam", "init": "default", "dropout": 0.5, "bs": 64, "early_stop": None, "save_best": False,
            "activation_stats": False, "valid_pct": None, "weights": None}


def changes(options: dict, config: dict) -> str:
    """The options a run set away from the defaults, as flags (`--opt sgd --bs 32`)."""
    words = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in options.items()
             if k in DEFAULTS and v != DEFAULTS[k] and v is not False]
    world_size = (config.get("distributed") or {}).get("world_size", 1)
    return " ".join(words + ([f"--nproc {world_size}"] if world_size > 1 else []))


def describe_or_flag(run_dir: Path) -> dict:
    """describe(), or a row that says the files hold something unexpected: one run never stops the listing."""
    try:
        return describe(run_dir)
    except (AttributeError, TypeError, ValueError) as e:  # valid JSON of the wrong shape
        keys = ("command", "arch", "epochs", "pretrained", "device", "world_size", "wall_seconds", "started",
                "baseline")
        return {"id": run_dir.name, "recipe": run_dir.parent.name, "path": str(run_dir),
                "state": f"damaged (unexpected content: {type(e).__name__})", "changes": "", "final": {},
                **dict.fromkeys(keys)}


def list_runs(out: Path, recipe: str | None = None) -> list[dict]:
    """Every run under `out` (or one recipe's), newest first. A recipe name that is neither a recipe nor a folder
    under `out` is refused, with a suggestion (a typo would otherwise list nothing)."""
    from trainer.recipes import RECIPES, get_recipe

    if recipe and recipe not in RECIPES and not (out / recipe).is_dir():
        get_recipe(recipe)  # the unknown-recipe error, with its suggestion
    if not out.is_dir():
        return []
    recipes = [recipe] if recipe else sorted(d.name for d in out.iterdir() if d.is_dir() and not d.is_symlink())
    rows = [describe_or_flag(d) for name in recipes for d in run_dirs(out, name)]
    return sorted(rows, key=lambda r: run_order(Path(r["path"])), reverse=True)


