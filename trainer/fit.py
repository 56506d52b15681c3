"""`trainer fit` and `trainer lr-find`: data, learner, training and the run directory, in that order.

Everything that can be checked (options, data layout, device, weights, --out) is checked
before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from trainer.config import FitConfig
from trainer.errors import BadInput, TrainingFailed, TrainingInterrupted
from trainer.recipes import Recipe, get_recipe


@dataclass
class Prepared:
    """A checked recipe, its data and a learner, ready to train; no run directory yet."""

    recipe: Recipe
    cfg: FitConfig  # resolved
    asked: FitConfig  # as the user gave it (None: not set), recorded so --resume can re-resolve on another machine
    data_path: Path
    dls: object
    learn: object
    say: object
    skipped: list  # (path, reason) of the unreadable images left out
    fast_dls: object = None  # the same data as decoded-tensor batches (cache.py), used while training
    world: object = None  # distributed.World: this process's rank among how many
    presized: dict | None = None  # the resized-image cache (cache.presize), for config.json
    precision: object = None  # device.Precision: how the model computes, and why
    config: dict | None = None  # what config.json holds, once start_run has written it


def prepare(cfg: FitConfig, console, quiet: bool = False) -> Prepared:
    os.environ.setdefault("MPLBACKEND", "Agg")
    recipe = get_recipe(cfg.recipe)
    asked, cfg = cfg, cfg.resolve(recipe)
    from trainer.data import build_dls, locate
    from trainer.runs import check_writable

    check_writable(Path(cfg.out))
    data_path = locate(recipe, cfg.data)

    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import set_seed

    from trainer.distributed import join, world_from_env
    from trainer.device import default_workers, resolve_device, resolve_precision
    from trainer.data import input_side
    from trainer.learner import apply_precision, create_learner

    world = world_from_env()
    if world.size > 1 and cfg.lr == "auto":
        raise BadInput("--lr auto runs lr_find in one process: run `trainer lr-find` first, then pass --lr")
    device = resolve_device(cfg.device, world.local_rank if world.launched else None)
    resolve_precision(cfg.precision, device)  # a precision this device cannot run fails before the data is read
    cfg = replace(cfg, device=str(device), workers=default_workers(device.type) if cfg.workers is None else cfg.workers)
    quiet = quiet or not world.main  # only rank 0 talks
    say = (lambda *_: None) if quiet else (lambda msg: console.print(msg, highlight=False))
    say(f"recipe {recipe.name}: data {data_path}, device {device}")
    world = join(world, device)
    if world.launched:
        say(f"distributed: {world.size} process(es) ({world.backend}), batch size {cfg.bs} per process "
            f"({cfg.bs * world.size} per step), lr {cfg.lr} as given")

    skipped = skip_unreadable(data_path, console)
    set_seed(cfg.seed)
    dls = build_dls(recipe, data_path, cfg, device, skip={path for path, _ in skipped})
    if len(dls.vocab) < 2:
        raise BadInput(f"{data_path}: only {len(dls.vocab)} class has readable images; "
                       f"a classifier needs at least 2 (see the unreadable files above)")
    if len(dls.valid_ds) == 0 or len(dls.train_ds) == 0:
        raise BadInput(f"{data_path}: the split left {len(dls.train_ds)} training and {len(dls.valid_ds)} "
                       f"validation images; add images or change --valid-pct")
    if len(dls.train) == 0:  # fastai drops the last partial training batch
        raise BadInput(f"--bs {cfg.bs} is larger than the {len(dls.train_ds)} training images, so an epoch "
                       f"has no batch; use --bs {max(1, len(dls.train_ds) // 2)} or add images")
    precision = resolve_precision(cfg.precision, device, input_side(recipe, cfg, dls))
    say(f"precision {precision.name}{' + channels_last' if precision.channels_last else ''}: {precision.reason}")
    cfg = replace(cfg, precision=precision.name)
    learn = create_learner(dls, cfg, recipe, Path("."))
    apply_precision(learn, precision)
    learn.remove_cb(ProgressCallback)
    from trainer.cache import cacheable, cached_dls, presize

    fast_dls = cached_dls(dls, say) if cacheable(recipe, cfg) else None
    presized = presize(recipe, cfg, data_path, {path for path, _ in skipped}, say)
    cfg = replace(cfg, cache=fast_dls is not None or presized is not None)
    return Prepared(recipe, cfg, asked, data_path, dls, learn, say, skipped, fast_dls=fast_dls, world=world,
                    presized=presized, precision=precision)


def skip_unreadable(data_path: Path, console) -> list:
    """Find the images that cannot be decoded; say so on stderr (even with --quiet); fail if none is left."""
    from trainer.images import readable_or_refuse, scan

    total, bad = scan(data_path)
    readable_or_refuse(total, bad, str(data_path), "check the files or point --data at the right folder",
                       "the full list goes to the run's skipped_images.txt")
    return bad


def start_run(p: Prepared, command: str, **extra) -> Path:
    """Create the run directory and its config.json (rewritten later with what is learned)."""
    from trainer import runs
    from trainer.split import split_rows, split_sha256, write_split

    run_dir = runs.new_run_dir(Path(p.cfg.out), p.recipe.name)
    p.learn.path = run_dir
    if p.skipped:
        runs.write_text(run_dir / "skipped_images.txt", "".join(f"{path}\t{why}\n" for path, why in p.skipped))
    rows = split_rows(p.dls, p.data_path)
    write_split(run_dir, rows)
    p.config = run_config(p, run_dir, command, split_sha256(rows), **extra)
    runs.write_json(run_dir / "config.json", p.config)
    return run_dir


def run_config(p: Prepared, run_dir: Path, command: str, split_digest: str, **extra) -> dict:
    from trainer import runs

    device = p.dls.device
    return {
        "run": run_dir.name,
        "command": command,
        "options": p.cfg.to_dict(),
        "asked": p.asked.to_dict(),
        "recipe": {"name": p.recipe.name, "url": p.recipe.url, "metrics": list(p.recipe.metrics),
                   "main_metric": p.recipe.main_metric},
        **extra,
        "data": {"path": str(p.data_path.resolve()), "classes": [str(c) for c in p.dls.vocab],
                 "n_train": len(p.dls.train_ds), "n_valid": len(p.dls.valid_ds), "n_skipped": len(p.skipped),
                 "split_sha256": split_digest,
                 "decoded_cache": getattr(p.fast_dls, "cache_info", None), "resized_cache": p.presized},
        "device": {"name": str(device), "precision": p.cfg.precision, "channels_last": p.precision.channels_last,
                   "precision_reason": p.precision.reason, **device_info(device)},
        "distributed": p.world.to_dict(),
        "environment": runs.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def lr_find(cfg: FitConfig, console, quiet: bool = False, start_lr=1e-7, end_lr=10.0, num_it=100):
    from trainer.cache import swapped_dls
    from trainer.lrfind import find_lr, write_lr_find

    if not 0 < start_lr < end_lr:
        raise BadInput(f"--start-lr ({start_lr:g}) must be positive and below --end-lr ({end_lr:g})")
    if num_it < 10:
        raise BadInput(f"--num-it must be at least 10 (fastai drops the first and last points), got {num_it}")
    from trainer.distributed import world_from_env

    if world_from_env().size > 1:
        raise BadInput("lr-find runs in one process: start it without torchrun or --nproc")
    p = prepare(cfg, console, quiet)
    run_dir = start_run(p, "lr-find")
    p.say(f"lr_find from {start_lr:g} to {end_lr:g} over {num_it} iterations, {p.cfg.arch}")
    with failures_logged(run_dir), swapped_dls(p.learn, p.fast_dls):
        result = find_lr(p.learn, start_lr, end_lr, num_it)
        write_lr_find(result, run_dir, f"{p.recipe.name} · lr_find · run {run_dir.name} · {p.cfg.arch}")
        from trainer.report import write_report

        write_report(run_dir)
    return run_dir, result


def fit(cfg: FitConfig, console, quiet: bool = False, live: bool = False) -> tuple[Path, dict]:
    if cfg.tensorboard:
        tensorboard_callback(None)  # a missing package is bad input: before anything is written
    p = prepare(cfg, console, quiet)
    if not p.world.main:
        return follow(p)
    run_dir = start_run(p, "fit")
    with failures_logged(run_dir):
        return run_dir, train(p, run_dir, console, quiet, live)


def follow(p: Prepared, resumed: dict | None = None) -> tuple[None, None]:
    """Ranks 1..N-1: the same schedule as rank 0, in lockstep, writing nothing."""
    from trainer.cache import swapped_dls
    from trainer.checkpoint import Interrupted, restore_rng, stop_on_signals
    from trainer.distributed import distributed, signal_sync

    flag = signal_sync()
    history = (resumed["metrics"]["header"], resumed["metrics"]["rows"]) if resumed else ([], [])
    try:
        with p.learn.added_cbs([*early_stopping(p.cfg, p.recipe, *history), flag]), stop_on_signals(flag), \
                swapped_dls(p.learn, p.fast_dls), distributed(p.learn, p.world, p.dls.device):
            if resumed:
                restore_rng(resumed, p.learn.dls.train)
            run_schedule(p.learn, p.cfg, resumed["epochs_done"] if resumed else 0)  # every rank sees the same gathered metrics: they stop together
    except Interrupted as stop:
        raise TrainingInterrupted("", stop.signum) from None  # rank 0 says what happened
    return None, None


def resume(run_dir: Path, console, quiet: bool = False, live: bool = False, **given) -> tuple[Path, dict]:
    """Continue an interrupted run from its last completed epoch, with the same options and schedule
    (`given`: device/precision, where and how to continue when not as the run asked; interpret, top_k,
    tensorboard, checked against the run's own)."""
    from trainer.config import resume_config
    from trainer.runs import read_config

    config = read_config(run_dir)
    recipe = config.get("recipe", {}).get("name", "RECIPE")
    if (run_dir / "summary.json").is_file():
        raise BadInput(f"{run_dir} already finished; start a new run with `trainer fit {recipe}`")
    no_checkpoint = BadInput(f"{run_dir} has no checkpoint (a whole last.pth): it stopped before its first epoch "
                             f"ended; start again with `trainer fit {recipe}`")
    try:
        # The data where the run found it (a download or lookup need not happen again).
        cfg = resume_config(config, **given)
    except (ValueError, KeyError, TypeError):
        raise no_checkpoint from None
    if not (run_dir / "last.pth").is_file():
        raise no_checkpoint
    p = prepare(cfg, console, quiet)
    from trainer.checkpoint import load_last, read_state

    from trainer.split import check_split

    check_split(run_dir, config, p.dls, p.data_path)  # the same validation set, or a clear refusal
    from trainer.runs import remove_stale_temporaries

    remove_stale_temporaries(run_dir)  # writes a kill cut short
    state = read_state(run_dir, p.dls.device)
    if state is None:
        raise no_checkpoint
    load_last(p.learn, state)
    if not p.world.main:
        return follow(p, state)
    p.learn.path, p.config = run_dir, config
    with failures_logged(run_dir):
        p.say(f"resuming {run_dir} after epoch {state['epochs_done']}")
        return run_dir, train(p, run_dir, console, quiet, live, resumed=state)


def train(p: Prepared, run_dir: Path, console, quiet: bool, live: bool, resumed: dict | None = None) -> dict:
    """Train (or go on training), then write the model, plots and summary into `run_dir`; returns the summary."""
    from trainer import runs
    from trainer.cache import swapped_dls
    from trainer.checkpoint import Checkpoints, Interrupted, restore_files, restore_rng, stop_on_signals
    from trainer.distributed import distributed
    from trainer.learner import export_weights
    from trainer.plots import plot_history, save_batch, save_results
    from trainer.progress import ConsoleProgress, RunLog

    cfg, learn, recipe = p.cfg, p.learn, p.recipe
    title = f"{recipe.name} · run {run_dir.name} · {cfg.arch}"
    names = dict(zip(map(str, p.dls.vocab), recipe.display_names(p.dls.vocab)))  # for fastai's own titles
    if not resumed:
        save_batch(p.dls, run_dir / "batch.png", f"{title} · training batch", names)

    extra = {"lr_find": auto_lr(p, run_dir, title)} if cfg.lr == "auto" else {}
    cfg = p.cfg
    schedule = schedule_of(cfg)
    why = ("pretrained weights: fine_tune trains the new head for one frozen epoch, then everything"
           if cfg.pretrained else
           "no pretrained weights: fit_one_cycle trains every layer from the start "
           "(fine_tune's frozen epoch would only train a random body's head)")
    p.say(f"{schedule} for {cfg.epochs} epoch(s) at lr {cfg.lr:g}, {cfg.arch}: {why}")
    if resumed:
        p.config.setdefault("resumed", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "after_epoch": resumed["epochs_done"],
                                                   "device": cfg.device, "precision": cfg.precision,
                                                   "world_size": p.world.size})
    else:  # start_run wrote the rest; --lr auto may have changed the options since
        p.config.update(options=cfg.to_dict(), schedule=schedule, schedule_reason=why, **extra)
    runs.write_json(run_dir / "config.json", p.config)

    run_log = RunLog(run_dir / "metrics.csv")
    done = 0
    if resumed:  # the files as the checkpoint has them, then training goes on with its random streams
        restore_files(run_dir, learn, resumed)
        run_log.restore(resumed["metrics"]["header"], resumed["metrics"]["rows"], resumed["run_log"])
        done = resumed["epochs_done"]
    total_epochs = cfg.epochs + (1 if schedule == "fine_tune" else 0)
    display = ConsoleProgress(console, total_epochs, run_log, live=live, quiet=quiet)
    checkpoints = Checkpoints(run_dir, run_log, recipe.main_metric, best=resumed and resumed["best"])
    callbacks = [run_log, display, checkpoints, *early_stopping(cfg, recipe, run_log.header, run_log.rows)]
    flag = checkpoints  # what a signal sets: Checkpoints itself, or (distributed) a flag every rank shares
    if p.world.launched:
        from trainer.distributed import signal_sync

        flag = signal_sync(checkpoints)
        callbacks.append(flag)
    if cfg.tensorboard:
        callbacks.append(tensorboard_callback(run_dir / "tensorboard"))
    stats = None
    if cfg.activation_stats:
        from trainer.activations import activation_callback

        stats = activation_callback(learn.model)
        callbacks.append(stats)
    start = time.perf_counter()
    try:
        with learn.added_cbs(callbacks), stop_on_signals(flag), \
                swapped_dls(learn, p.fast_dls), distributed(learn, p.world, p.dls.device):
            if resumed:
                restore_rng(resumed, learn.dls.train)  # last: nothing draws from them before training goes on
            run_schedule(learn, cfg, done)
    except Interrupted as stop:
        epochs = len(run_log.rows)
        raise TrainingInterrupted(f"stopped by {stop} after {epochs} of {total_epochs} epochs; the checkpoint is "
                                  f"saved: continue with `trainer fit --resume {run_dir}"
                                  f"{f' --nproc {p.world.size}' if p.world.launched else ''}`", stop.signum) from None
    finally:
        display.close()
    wall_seconds = time.perf_counter() - start
    stopped_early = cfg.early_stop is not None and len(run_log.rows) < total_epochs
    if stopped_early:
        p.say(f"early stop: {recipe.main_metric} did not improve for {cfg.early_stop} epoch(s); "
              f"stopped after epoch {len(run_log.rows)} of {total_epochs}")
    final_row = keep_best(p, run_dir, run_log, checkpoints.best) if cfg.save_best else run_log.last
    if cfg.activation_stats:
        from trainer.activations import write_activations

        write_activations(stats, run_dir, f"{title} · activations")

    learn.to_contiguous(to_fp32=True)  # the exported model is fp32 in the default memory format: it runs anywhere
    with runs.atomic_path(run_dir / "model.pkl") as tmp:
        learn.export(tmp)  # for fastai users (load_learner); trainer itself loads the safetensors below
    export_weights(learn, run_dir, cfg, recipe)
    runs.point_latest(run_dir.parent, run_dir)  # `latest` names the newest run with a model
    plot_history(run_log, title, run_dir / "history.png", best=checkpoints.best)
    save_results(learn, run_dir / "results.png", f"{title} · validation: actual / predicted", names)
    final = {k: v for k, v in final_row.items() if k not in ("epoch", "phase", "seconds")}
    summary = {
        "run": run_dir.name,
        "recipe": recipe.name,
        "final": final,
        "epochs": cfg.epochs,
        "epochs_run": len(run_log.rows),
        "wall_seconds": round(wall_seconds, 2),
        "train_seconds": round(run_log.train_seconds, 2),
        "train_images_per_second": round(run_log.images_per_second * p.world.size, 1),  # every rank's images
        "device": str(p.dls.device),
        "precision": cfg.precision,
        "model": "model.safetensors",
        "best": checkpoints.best,  # best.pth holds that epoch's weights
        "final_epoch": final_row["epoch"],  # the epoch whose weights were exported
        "stopped_early": stopped_early,
        "baseline": recipe.baseline.judge(cfg.to_dict(), final) if recipe.baseline else None,
    }
    if resumed:
        summary["resumed_after_epoch"] = resumed["epochs_done"]
    if cfg.interpret:
        from trainer.interpret import analyse, write_interpretation

        analysis = analyse(learn, (p.fast_dls or p.dls).valid, p.dls.valid_ds.items, list(names.values()))
        summary["interpretation"] = write_interpretation(analysis, run_dir, title, cfg.top_k)
    runs.write_json(run_dir / "summary.json", summary)
    from trainer.report import write_report

    write_report(run_dir)
    (run_dir / "last.pth").unlink(missing_ok=True)  # only --resume needs it; model.pkl and best.pth stay
    return summary


def auto_lr(p: Prepared, run_dir: Path, title: str) -> dict:
    """--lr auto: lr_find first, then train with its valley suggestion (p.cfg.lr is set)."""
    from trainer.cache import swapped_dls
    from trainer.lrfind import find_lr, write_lr_find

    p.say("--lr auto: running lr_find first")
    with swapped_dls(p.learn, p.fast_dls):
        found = find_lr(p.learn)
    write_lr_find(found, run_dir, f"{title} · lr_find")
    if "valley" not in found["suggestions"]:
        raise BadInput(f"lr_find's loss diverged after {len(found['losses'])} points, too early for a valley "
                       f"suggestion (curve: {run_dir / 'lr_find.png'}); pass --lr, or rerun "
                       f"`trainer lr-find {p.recipe.name}` with a lower --end-lr for a slower ramp")
    p.cfg = replace(p.cfg, lr=found["suggestions"]["valley"])
    p.say(f"lr_find suggests {', '.join(f'{k} {v:.2e}' for k, v in found['suggestions'].items())}: "
          f"training with valley")
    return {"suggestions": found["suggestions"], "chosen": "valley"}


def keep_best(p: Prepared, run_dir: Path, run_log, best: dict | None) -> dict:
    """--save-best (and --early-stop): load the best epoch's weights; its row of metrics.csv is the result."""
    if not best or best["epoch"] == run_log.last["epoch"]:
        return run_log.last
    from fastai.learner import load_model

    load_model(run_dir / "best.pth", p.learn.model, None, with_opt=False, device=p.learn.dls.device)
    p.say(f"keeping epoch {best['epoch']}'s weights (best {p.recipe.main_metric})")
    return dict(zip(run_log.header, run_log.rows[best["epoch"] - 1]))


def early_stopping(cfg: FitConfig, recipe: Recipe, header: list[str] = (), rows: list[list] = ()) -> list:
    """fastai's EarlyStoppingCallback on the recipe's main metric, with --early-stop's patience; a resumed run
    replays the epochs done (`header`, `rows` of metrics.csv) so it stops where the uninterrupted run would."""
    if not cfg.early_stop:
        return []
    import numpy as np

    from trainer.checkpoint import ResumableEarlyStopping

    lower_is_better = recipe.main_metric in ("error_rate", "valid_loss")
    history = []
    if rows:  # the epochs of the fit being continued (fine_tune's unfrozen fit does not see the frozen epoch)
        metric, phase = header.index(recipe.main_metric), header.index("phase")
        history = [row[metric] for row in rows if row[phase] == rows[-1][phase]]
    return [ResumableEarlyStopping(monitor=recipe.main_metric, comp=np.less if lower_is_better else np.greater,
                                   min_delta=0.0, patience=cfg.early_stop, history=history)]


def tensorboard_callback(log_dir: Path | None):
    """fastai's TensorBoardCallback: losses, metrics and every optimiser hyper-parameter (lr, mom) per step."""
    try:
        from fastai.callback.tensorboard import TensorBoardCallback
    except ImportError:
        raise BadInput("--tensorboard needs the tensorboard package: pip install tensorboard "
                       "(or pip install 'trainer[tensorboard]')") from None
    # No graph tracing (fails under mixed precision) and no prediction images: scalars only.
    return log_dir and TensorBoardCallback(log_dir=str(log_dir), trace_model=False, log_preds=False)


def schedule_of(cfg: FitConfig) -> str:
    return "fine_tune" if cfg.pretrained else "fit_one_cycle"


def run_schedule(learn, cfg: FitConfig, done: int) -> None:
    """fine_tune or fit_one_cycle, continuing after `done` epochs (--resume)."""
    if schedule_of(cfg) == "fit_one_cycle":
        learn.fit_one_cycle(cfg.epochs, cfg.lr, start_epoch=done)  # fastai skips the epochs done
    elif done == 0:
        learn.fine_tune(cfg.epochs, cfg.lr)
    else:  # the frozen epoch is done: fine_tune's second half, as fastai writes it
        learn.unfreeze()
        learn.fit_one_cycle(cfg.epochs, slice(cfg.lr / 2 / 100, cfg.lr / 2), pct_start=0.3, div=5.0,
                            start_epoch=done - 1)


@contextmanager
def failures_logged(run_dir: Path):
    """Once a run directory exists, a crash becomes exit 1 with its traceback kept in error.log."""
    from trainer import runs

    try:
        yield
    except (KeyboardInterrupt, BadInput, TrainingInterrupted):
        raise
    except Exception as e:
        runs.write_text(run_dir / "error.log", traceback.format_exc())
        raise TrainingFailed(f"training failed: {type(e).__name__}: {e} (traceback in {run_dir / 'error.log'})") from e


def device_info(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    return {"threads": torch.get_num_threads()}
