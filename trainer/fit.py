"""`trainer fit`: data, learner, training and the run directory, in that order.

Everything that can be checked (options, data layout, device, weights, --out) is checked
before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

from trainer.config import FitConfig
from trainer.errors import BadInput, TrainingFailed
from trainer.recipes import get_recipe


def default_workers(device) -> int:
    # On a CPU the model already uses every core; loader processes would compete with it.
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def fit(cfg: FitConfig, console, quiet: bool = False, live: bool = False) -> tuple[Path, dict]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    # fastai's layers still use torch.jit.script, which torch 2.10+ deprecates: not the user's concern
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    recipe = get_recipe(cfg.recipe)
    cfg = cfg.resolve(recipe)
    from trainer.data import build_dls, locate
    from trainer.runs import check_writable

    check_writable(Path(cfg.out))
    data_path = locate(recipe, cfg.data)

    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import set_seed

    from trainer import runs
    from trainer.learner import create_learner, resolve_device, resolve_precision
    from trainer.plots import plot_history
    from trainer.progress import ConsoleProgress, RunLog

    device = resolve_device(cfg.device)
    cfg = replace(cfg, device=str(device), precision=resolve_precision(cfg.precision, device),
                  workers=default_workers(device) if cfg.workers is None else cfg.workers)
    say = (lambda *_: None) if quiet else (lambda msg: console.print(msg, highlight=False))
    say(f"recipe {recipe.name}: data {data_path}, device {device} ({cfg.precision})")

    set_seed(cfg.seed)
    dls = build_dls(recipe, data_path, cfg, device)
    if len(dls.valid_ds) == 0 or len(dls.train_ds) == 0:
        raise BadInput(f"{data_path}: the split left {len(dls.train_ds)} training and {len(dls.valid_ds)} "
                       f"validation images; add images or change --valid-pct")
    learn = create_learner(dls, cfg, recipe, Path("."))
    learn.remove_cb(ProgressCallback)

    run_dir = runs.new_run_dir(Path(cfg.out), recipe.name)
    learn.path = run_dir
    schedule = "fine_tune" if cfg.pretrained else "fit_one_cycle"
    why = ("pretrained weights: fine_tune trains the new head for one frozen epoch, then everything"
           if cfg.pretrained else
           "no pretrained weights: fit_one_cycle trains every layer from the start "
           "(fine_tune's frozen epoch would only train a random body's head)")
    say(f"{schedule} for {cfg.epochs} epoch(s) at lr {cfg.lr:g}, {cfg.arch}: {why}")
    config = {
        "run": run_dir.name,
        "options": cfg.to_dict(),
        "recipe": {"name": recipe.name, "url": recipe.url, "metrics": list(recipe.metrics),
                   "main_metric": recipe.main_metric},
        "schedule": schedule,
        "schedule_reason": why,
        "data": {"path": str(data_path.resolve()), "classes": [str(c) for c in dls.vocab],
                 "n_train": len(dls.train_ds), "n_valid": len(dls.valid_ds)},
        "device": {"name": str(device), "precision": cfg.precision, **device_info(device)},
        "environment": runs.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    runs.write_json(run_dir / "config.json", config)

    run_log = RunLog(run_dir / "metrics.csv")
    total_epochs = cfg.epochs + (1 if schedule == "fine_tune" else 0)
    display = ConsoleProgress(console, total_epochs, run_log, live=live, quiet=quiet)
    start = time.perf_counter()
    try:
        with learn.added_cbs([run_log, display]):
            if schedule == "fine_tune":
                learn.fine_tune(cfg.epochs, cfg.lr)
            else:
                learn.fit_one_cycle(cfg.epochs, cfg.lr)
    except (KeyboardInterrupt, BadInput):
        raise
    except Exception as e:
        runs.write_text(run_dir / "error.log", traceback.format_exc())
        raise TrainingFailed(f"training failed: {type(e).__name__}: {e} (traceback in {run_dir / 'error.log'})") from e
    finally:
        display.close()
    wall_seconds = time.perf_counter() - start

    if cfg.precision != "fp32":
        learn.to_fp32()  # the exported model loads and predicts anywhere
    with runs.atomic_path(run_dir / "model.pkl") as tmp:
        learn.export(tmp)
    plot_history(run_log, f"{recipe.name} · run {run_dir.name} · {cfg.arch}", run_dir / "history.png")
    final = {k: v for k, v in run_log.last.items() if k not in ("epoch", "phase", "seconds")}
    summary = {
        "run": run_dir.name,
        "recipe": recipe.name,
        "final": final,
        "epochs": cfg.epochs,
        "epochs_run": len(run_log.rows),
        "wall_seconds": round(wall_seconds, 2),
        "train_seconds": round(run_log.train_seconds, 2),
        "train_images_per_second": round(run_log.images_per_second, 1),
        "device": str(device),
        "precision": cfg.precision,
        "model": "model.pkl",
    }
    runs.write_json(run_dir / "summary.json", summary)
    return run_dir, summary


def device_info(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    return {"threads": torch.get_num_threads()}
