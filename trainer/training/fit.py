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

from trainer.runs import rundir
from trainer.config import FitConfig
from trainer.errors import BadInput, TrainingFailed, TrainingInterrupted
from trainer.recipes import Recipe, get_recipe


@dataclass(frozen=True)
class TrainingData:
    """The recipe's data, checked: where it is, its DataLoaders and what was left out or cached."""

    path: Path
    dls: object  # fastai DataLoaders
    skipped: list  # (path, reason) of the unreadable images left out
    fast_dls: object = None  # the same data as decoded-tensor batches (cache.py), used while training
    presized: dict | None = None  # the resized-image cache (cache.presize), for config.json


@dataclass
class Prepared:
    """A checked recipe, its data and a learner, ready to train; no run directory yet."""

    recipe: Recipe
    cfg: FitConfig  # resolved once, frozen
    asked: FitConfig  # as the user gave it (None: not set), recorded so --resume can re-resolve on another machine
    data: TrainingData
    learn: object
    world: object  # distributed.World: this process's rank among how many
    precision: object  # device.Precision: how the model computes, and why
    say: object  # print for people (nothing with --quiet, or on ranks other than 0)
    lr_found: dict | None = None  # --lr auto: lr_find's curve and suggestions
    config: dict | None = None  # what config.json holds, once start_run has written it


def prepare(cfg: FitConfig, console, quiet: bool = False) -> Prepared:
    """Resolve the options once (recipe defaults, then machine, data, precision, caches and --lr auto, in that
    order) and build the data and the learner. Every check happens here, before a run directory exists."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    recipe = get_recipe(cfg.recipe)
    asked, cfg = cfg, cfg.resolve(recipe)
    from trainer.data.source import locate
    from trainer.runs.store import check_writable

    check_writable(Path(cfg.out))
    data_path = locate(recipe, cfg.data)
    cfg, device, world = resolve_machine(cfg)
    say = (lambda *_: None) if quiet or not world.main else (lambda msg: console.print(msg, highlight=False))
    say(f"recipe {recipe.name}: data {data_path}, device {device}")
    from trainer.training.distributed import join

    world = join(world, device)
    if world.launched:
        say(f"distributed: {world.size} process(es) ({world.backend}), batch size {cfg.bs} per process "
            f"({cfg.bs * world.size} per step), lr {cfg.lr} as given")
    skipped = skip_unreadable(data_path, console)
    dls = load_data(recipe, cfg, data_path, device, skipped)
    learn, precision = build_learner(recipe, cfg, dls, device, say)
    from trainer.data.cache import cacheable, cached_dls, presize

    fast_dls = cached_dls(dls, say) if cacheable(recipe, cfg) else None
    presized = presize(recipe, cfg, data_path, {path for path, _ in skipped}, say)
    lr_found = auto_lr(learn, fast_dls, recipe, say) if cfg.lr == "auto" else None
    cfg = replace(cfg, precision=precision.name, cache=fast_dls is not None or presized is not None,
                  lr=lr_found["suggestions"]["valley"] if lr_found else cfg.lr)
    data = TrainingData(data_path, dls, skipped, fast_dls, presized)
    return Prepared(recipe, cfg, asked, data, learn, world, precision, say, lr_found)


def resolve_machine(cfg: FitConfig):
    """(cfg with device and workers resolved, torch device, distributed world) for this process."""
    from trainer.device import default_workers, resolve_device, resolve_precision
    from trainer.training.distributed import world_from_env

    world = world_from_env()
    if world.size > 1 and cfg.lr == "auto":
        raise BadInput("--lr auto runs lr_find in one process: run `trainer lr-find` first, then pass --lr")
    device = resolve_device(cfg.device, world.local_rank if world.launched else None)
    resolve_precision(cfg.precision, device)  # a precision this device cannot run fails before the data is read
    workers = default_workers(device.type) if cfg.workers is None else cfg.workers
    return replace(cfg, device=str(device), workers=workers), device, world


def load_data(recipe: Recipe, cfg: FitConfig, data_path: Path, device, skipped: list):
    """The recipe's DataLoaders without the unreadable files, refused when they cannot train a classifier."""
    from fastai.torch_core import set_seed

    from trainer.data.loaders import build_dls

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
    return dls


def build_learner(recipe: Recipe, cfg: FitConfig, dls, device, say):
    """(fastai Learner, device.Precision): the model, computing in the precision this device and size call for."""
    from fastai.callback.progress import ProgressCallback

    from trainer.data.loaders import input_side
    from trainer.device import resolve_precision
    from trainer.model.learner import apply_precision, create_learner

    precision = resolve_precision(cfg.precision, device, input_side(recipe, cfg, dls))
    say(f"precision {precision.name}{' + channels_last' if precision.channels_last else ''}: {precision.reason}")
    learn = create_learner(dls, replace(cfg, precision=precision.name), recipe, Path("."))
    apply_precision(learn, precision)
    learn.remove_cb(ProgressCallback)  # ConsoleProgress shows progress
    return learn, precision


def auto_lr(learn, fast_dls, recipe: Recipe, say) -> dict:
    """--lr auto: lr_find, whose valley suggestion becomes the learning rate (before any run directory exists,
    so config.json is written once, with the rate used)."""
    from trainer.data.cache import swapped_dls
    from trainer.training.lrfind import find_lr

    say("--lr auto: running lr_find first")
    with swapped_dls(learn, fast_dls):
        found = find_lr(learn)
    if "valley" not in found["suggestions"]:
        raise BadInput(f"lr_find's loss diverged after {len(found['losses'])} points, too early for a valley "
                       f"suggestion; pass --lr, or see the curve with `trainer lr-find {recipe.name}` (a lower "
                       f"--end-lr ramps up more slowly)")
    say(f"lr_find suggests {', '.join(f'{k} {v:.2e}' for k, v in found['suggestions'].items())}: "
        f"training with valley")
    return found


def skip_unreadable(data_path: Path, console) -> list:
    """Find the images that cannot be decoded; say so on stderr (even with --quiet); fail if none is left."""
    from trainer.data.images import readable_or_refuse, scan

    total, bad = scan(data_path)
    readable_or_refuse(total, bad, str(data_path), "check the files or point --data at the right folder",
                       "the full list goes to the run's skipped_images.txt")
    return bad


def start_run(p: Prepared, command: str, **extra) -> Path:
    """Create the run directory: config.json (every resolved option), split.csv, what lr_find found."""
    from trainer import files
    from trainer.runs import store
    from trainer.runs.split import split_rows, split_sha256, write_split

    run_dir = store.new_run_dir(Path(p.cfg.out), p.recipe.name)
    p.learn.path = run_dir
    if p.data.skipped:
        files.write_text(run_dir / rundir.SKIPPED, "".join(f"{path}\t{why}\n" for path, why in p.data.skipped))
    rows = split_rows(p.data.dls, p.data.path)
    write_split(run_dir, rows)
    if p.lr_found:
        from trainer.training.lrfind import write_lr_find

        write_lr_find(p.lr_found, run_dir, f"{p.recipe.name} · run {run_dir.name} · {p.cfg.arch} · lr_find")
        extra["lr_find"] = {"suggestions": p.lr_found["suggestions"], "chosen": "valley"}
    p.config = run_config(p, run_dir, command, split_sha256(rows), **extra)
    files.write_json(run_dir / rundir.CONFIG, p.config)
    return run_dir


def run_config(p: Prepared, run_dir: Path, command: str, split_digest: str, **extra) -> dict:
    from trainer import files
    from trainer.runs import store

    device = p.data.dls.device
    return {
        "run": run_dir.name,
        "command": command,
        "options": p.cfg.to_dict(),
        "asked": p.asked.to_dict(),
        "recipe": {"name": p.recipe.name, "url": p.recipe.url, "metrics": list(p.recipe.metrics),
                   "main_metric": p.recipe.main_metric},
        **extra,
        "data": {"path": str(p.data.path.resolve()), "classes": [str(c) for c in p.data.dls.vocab],
                 "n_train": len(p.data.dls.train_ds), "n_valid": len(p.data.dls.valid_ds), "n_skipped": len(p.data.skipped),
                 "split_sha256": split_digest,
                 "decoded_cache": getattr(p.data.fast_dls, "cache_info", None), "resized_cache": p.data.presized},
        "device": {"name": str(device), "precision": p.cfg.precision, "channels_last": p.precision.channels_last,
                   "precision_reason": p.precision.reason, **device_info(device)},
        "distributed": p.world.to_dict(),
        "environment": store.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def forgets_presized_copies(command):
    """A training command that leaves no presized copies behind in the process (images.RGBImage reads them
    while the run lasts), whether it ends, fails or is interrupted."""
    import functools

    @functools.wraps(command)
    def run(*args, **kwargs):
        from trainer.data.images import forget_presized_copies

        try:
            return command(*args, **kwargs)
        finally:
            forget_presized_copies()

    return run


@forgets_presized_copies
def lr_find(cfg: FitConfig, console, quiet: bool = False, start_lr=1e-7, end_lr=10.0, num_it=100):
    from trainer.data.cache import swapped_dls
    from trainer.training.lrfind import find_lr, write_lr_find

    if not 0 < start_lr < end_lr:
        raise BadInput(f"--start-lr ({start_lr:g}) must be positive and below --end-lr ({end_lr:g})")
    if num_it < 10:
        raise BadInput(f"--num-it must be at least 10 (fastai drops the first and last points), got {num_it}")
    from trainer.training.distributed import world_from_env

    if world_from_env().size > 1:
        raise BadInput("lr-find runs in one process: start it without torchrun or --nproc")
    p = prepare(cfg, console, quiet)
    run_dir = start_run(p, "lr-find")
    p.say(f"lr_find from {start_lr:g} to {end_lr:g} over {num_it} iterations, {p.cfg.arch}")
    with failures_logged(run_dir), swapped_dls(p.learn, p.data.fast_dls):
        result = find_lr(p.learn, start_lr, end_lr, num_it)
        write_lr_find(result, run_dir, f"{p.recipe.name} · lr_find · run {run_dir.name} · {p.cfg.arch}")
        from trainer.runs.report import write_report

        write_report(run_dir)
    return run_dir, result


@forgets_presized_copies
def fit(cfg: FitConfig, console, quiet: bool = False, live: bool = False) -> tuple[Path, dict]:
    if cfg.tensorboard:
        tensorboard_callback(None)  # a missing package is bad input: before anything is written
    p = prepare(cfg, console, quiet)
    if not p.world.main:
        return follow(p)
    run_dir = start_run(p, "fit", schedule=schedule_of(p.cfg), schedule_reason=schedule_reason(p.cfg))
    with failures_logged(run_dir):
        return run_dir, train(p, run_dir, console, quiet, live)


def follow(p: Prepared, resumed: dict | None = None) -> tuple[None, None]:
    """Ranks 1..N-1: the same schedule as rank 0, in lockstep, writing nothing."""
    from trainer.data.cache import swapped_dls
    from trainer.training.checkpoint import Interrupted, restore_rng, stop_on_signals
    from trainer.training.distributed import distributed, signal_sync

    flag = signal_sync()
    history = (resumed["metrics"]["header"], resumed["metrics"]["rows"]) if resumed else ([], [])
    try:
        with p.learn.added_cbs([*early_stopping(p.cfg, p.recipe, *history), flag]), stop_on_signals(flag), \
                swapped_dls(p.learn, p.data.fast_dls), distributed(p.learn, p.world, p.data.dls.device):
            if resumed:
                restore_rng(resumed, p.learn.dls.train)
            run_schedule(p.learn, p.cfg, resumed["epochs_done"] if resumed else 0)  # every rank sees the same gathered metrics: they stop together
    except Interrupted as stop:
        raise TrainingInterrupted("", stop.signum) from None  # rank 0 says what happened
    return None, None


@forgets_presized_copies
def resume(run_dir: Path, console, quiet: bool = False, live: bool = False, **given) -> tuple[Path, dict]:
    """Continue an interrupted run from its last completed epoch, with the same options and schedule
    (`given`: device/precision, where and how to continue when not as the run asked; interpret, top_k,
    tensorboard, checked against the run's own)."""
    from trainer.config import resume_config
    from trainer.runs.rundir import read_config

    config = read_config(run_dir)
    recipe = config.get("recipe", {}).get("name", "RECIPE")
    if (run_dir / rundir.SUMMARY).is_file():
        raise BadInput(f"{run_dir} already finished; start a new run with `trainer fit {recipe}`")
    no_checkpoint = BadInput(f"{run_dir} has no checkpoint (a whole last.pth): it stopped before its first epoch "
                             f"ended; start again with `trainer fit {recipe}`")
    try:
        # The data where the run found it (a download or lookup need not happen again).
        cfg = resume_config(config, **given)
    except (ValueError, KeyError, TypeError):
        raise no_checkpoint from None
    if not (run_dir / rundir.LAST).is_file():
        raise no_checkpoint
    from trainer.training.checkpoint import load_last, read_state
    from trainer.files import remove_stale_temporaries
    from trainer.runs.split import check_split

    p = prepare(cfg, console, quiet)
    check_split(run_dir, config, p.data.dls, p.data.path)  # the same validation set, or a clear refusal
    remove_stale_temporaries(run_dir)  # writes a kill cut short
    state = read_state(run_dir, p.data.dls.device)
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
    """Train (or go on training), then write the model, plots and summary into `run_dir`; returns the summary.
    Read top to bottom: each step is one function below."""
    from trainer.inspection.plots import save_batch

    title = f"{p.recipe.name} · run {run_dir.name} · {p.cfg.arch}"
    if resumed:
        record_resume(p, run_dir, resumed)
    else:
        save_batch(p.data.dls, run_dir / rundir.BATCH, f"{title} · training batch", display_names(p))
    p.say(f"{schedule_of(p.cfg)} for {p.cfg.epochs} epoch(s) at lr {p.cfg.lr:g}, {p.cfg.arch}: {schedule_reason(p.cfg)}")
    run_log = training_log(run_dir, p.learn, resumed)
    trained = run_training(p, run_dir, console, run_log, live, quiet, resumed)
    final_row = keep_best(p, run_dir, run_log, trained.best) if p.cfg.save_best else run_log.last
    export_model(p, run_dir)
    write_plots(p, run_dir, run_log, trained, title)
    summary = summarise(p, run_dir, run_log, trained, final_row, resumed)
    if p.cfg.interpret:
        summary["interpretation"] = interpret_validation(p, run_dir, title, p.cfg.top_k)
    finish(run_dir, summary)
    return summary


@dataclass(frozen=True)
class Trained:
    """What training itself produced, beside the run log."""

    best: dict | None  # {"epoch", "metric", "value"} of the best epoch by the recipe's main metric
    wall_seconds: float
    stopped_early: bool
    activation_stats: object = None  # fastai's ActivationStats, with --activation-stats


def display_names(p: Prepared) -> dict:
    """vocab -> the name people read, for fastai's own plot titles."""
    return dict(zip(map(str, p.data.dls.vocab), p.recipe.display_names(p.data.dls.vocab)))


def record_resume(p: Prepared, run_dir: Path, resumed: dict) -> None:
    """config.json gains a line for each resume: when, after which epoch, where and how it went on."""
    from trainer import files
    from trainer.runs import store

    p.config.setdefault("resumed", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                               "after_epoch": resumed["epochs_done"], "device": p.cfg.device,
                                               "precision": p.cfg.precision, "world_size": p.world.size})
    files.write_json(run_dir / rundir.CONFIG, p.config)


def training_log(run_dir: Path, learn, resumed: dict | None):
    """The run log (metrics.csv): empty, or, for --resume, the files and the log as the checkpoint has them."""
    from trainer.training.checkpoint import restore_files
    from trainer.training.progress import RunLog

    run_log = RunLog(run_dir / rundir.METRICS)
    if resumed:
        restore_files(run_dir, learn, resumed)
        run_log.restore(resumed["metrics"]["header"], resumed["metrics"]["rows"], resumed["run_log"])
    return run_log


def run_training(p: Prepared, run_dir: Path, console, run_log, live: bool, quiet: bool,
                 resumed: dict | None) -> Trained:
    """The schedule, with the run's callbacks (progress, checkpoints, early stopping, signals)."""
    from trainer.data.cache import swapped_dls
    from trainer.training.checkpoint import Checkpoints, Interrupted, restore_rng, stop_on_signals
    from trainer.training.distributed import distributed
    from trainer.training.progress import ConsoleProgress

    total_epochs = p.cfg.epochs + (1 if schedule_of(p.cfg) == "fine_tune" else 0)
    display = ConsoleProgress(console, total_epochs, run_log, live=live, quiet=quiet)
    checkpoints = Checkpoints(run_dir, run_log, p.recipe.main_metric, best=resumed and resumed["best"])
    flag, extra = signal_target(p, checkpoints)
    stats = activation_stats(p)
    callbacks = [run_log, display, checkpoints, *early_stopping(p.cfg, p.recipe, run_log.header, run_log.rows),
                 *extra, *([tensorboard_callback(run_dir / rundir.TENSORBOARD)] if p.cfg.tensorboard else []),
                 *([stats] if stats else [])]
    start = time.perf_counter()
    try:
        with p.learn.added_cbs(callbacks), stop_on_signals(flag), \
                swapped_dls(p.learn, p.data.fast_dls), distributed(p.learn, p.world, p.data.dls.device):
            if resumed:
                restore_rng(resumed, p.learn.dls.train)  # last: nothing draws from them before training goes on
            run_schedule(p.learn, p.cfg, resumed["epochs_done"] if resumed else 0)
    except Interrupted as stop:
        resume = f"trainer fit --resume {run_dir}{f' --nproc {p.world.size}' if p.world.launched else ''}"
        raise TrainingInterrupted(f"stopped by {stop} after {len(run_log.rows)} of {total_epochs} epochs; the "
                                  f"checkpoint is saved: continue with `{resume}`", stop.signum) from None
    finally:
        display.close()
    stopped_early = p.cfg.early_stop is not None and len(run_log.rows) < total_epochs
    if stopped_early:
        p.say(f"early stop: {p.recipe.main_metric} did not improve for {p.cfg.early_stop} epoch(s); "
              f"stopped after epoch {len(run_log.rows)} of {total_epochs}")
    return Trained(checkpoints.best, time.perf_counter() - start, stopped_early, stats)


def signal_target(p: Prepared, checkpoints) -> tuple[object, list]:
    """What a signal sets (Checkpoints itself, or, distributed, a flag every rank shares) and the callbacks
    that adds."""
    if not p.world.launched:
        return checkpoints, []
    from trainer.training.distributed import signal_sync

    flag = signal_sync(checkpoints)
    return flag, [flag]


def activation_stats(p: Prepared):
    if not p.cfg.activation_stats:
        return None
    from trainer.training.activations import activation_callback

    return activation_callback(p.learn.model)


def export_model(p: Prepared, run_dir: Path) -> None:
    """model.safetensors + model.json (what trainer loads), model.pkl (for fastai users); `latest` moves."""
    from trainer import files
    from trainer.runs import store
    from trainer.model.learner import export_weights

    p.learn.to_contiguous(to_fp32=True)  # the exported model is fp32 in the default memory format: it runs anywhere
    with files.atomic_path(run_dir / rundir.MODEL_PICKLE) as tmp:
        p.learn.export(tmp)
    export_weights(p.learn, run_dir, p.cfg, p.recipe)
    store.point_latest(run_dir.parent, run_dir)  # `latest` names the newest run with a model


def write_plots(p: Prepared, run_dir: Path, run_log, trained: Trained, title: str) -> None:
    from trainer.inspection.plots import plot_history, save_results

    if trained.activation_stats is not None:
        from trainer.training.activations import write_activations

        write_activations(trained.activation_stats, run_dir, f"{title} · activations")
    plot_history(run_log, title, run_dir / rundir.HISTORY, best=trained.best)
    save_results(p.learn, run_dir / rundir.RESULTS, f"{title} · validation: actual / predicted", display_names(p))


def summarise(p: Prepared, run_dir: Path, run_log, trained: Trained, final_row: dict, resumed: dict | None) -> dict:
    final = {k: v for k, v in final_row.items() if k not in ("epoch", "phase", "seconds")}
    summary = {
        "run": run_dir.name,
        "recipe": p.recipe.name,
        "final": final,
        "epochs": p.cfg.epochs,
        "epochs_run": len(run_log.rows),
        "wall_seconds": round(trained.wall_seconds, 2),
        "train_seconds": round(run_log.train_seconds, 2),
        "train_images_per_second": round(run_log.images_per_second * p.world.size, 1),  # every rank's images
        "device": str(p.data.dls.device),
        "precision": p.cfg.precision,
        "model": rundir.WEIGHTS,
        "best": trained.best,  # best.pth holds that epoch's weights
        "final_epoch": final_row["epoch"],  # the epoch whose weights were exported
        "stopped_early": trained.stopped_early,
        "baseline": p.recipe.judge(p.cfg.to_dict(), final),
    }
    if resumed:
        summary["resumed_after_epoch"] = resumed["epochs_done"]
    return summary


def interpret_validation(p: Prepared, run_dir: Path, title: str, top_k: int) -> dict:
    """The confusion matrix, top losses and per-class report, from the learner that was just trained."""
    from trainer.inspection.interpret import analyse, write_interpretation

    analysis = analyse(p.learn, (p.data.fast_dls or p.data.dls).valid, p.data.dls.valid_ds.items, list(display_names(p).values()))
    return write_interpretation(analysis, run_dir, title, top_k)


def finish(run_dir: Path, summary: dict) -> None:
    """summary.json marks the run done; the report shows it; the checkpoint is no longer needed."""
    from trainer import files
    from trainer.runs import store
    from trainer.runs.report import write_report

    files.write_json(run_dir / rundir.SUMMARY, summary)
    write_report(run_dir)
    (run_dir / rundir.LAST).unlink(missing_ok=True)  # only --resume needs it; model.pkl and best.pth stay


def keep_best(p: Prepared, run_dir: Path, run_log, best: dict | None) -> dict:
    """--save-best (and --early-stop): load the best epoch's weights; its row of metrics.csv is the result."""
    if not best or best["epoch"] == run_log.last["epoch"]:
        return run_log.last
    from fastai.learner import load_model

    load_model(run_dir / rundir.BEST, p.learn.model, None, with_opt=False, device=p.learn.dls.device)
    p.say(f"keeping epoch {best['epoch']}'s weights (best {p.recipe.main_metric})")
    return dict(zip(run_log.header, run_log.rows[best["epoch"] - 1]))


def early_stopping(cfg: FitConfig, recipe: Recipe, header: list[str] = (), rows: list[list] = ()) -> list:
    """fastai's EarlyStoppingCallback on the recipe's main metric, with --early-stop's patience; a resumed run
    replays the epochs done (`header`, `rows` of metrics.csv) so it stops where the uninterrupted run would."""
    if not cfg.early_stop:
        return []
    from trainer.training.checkpoint import ResumableEarlyStopping

    history = []
    if rows:  # the epochs of the fit being continued (fine_tune's unfrozen fit does not see the frozen epoch)
        metric, phase = header.index(recipe.main_metric), header.index("phase")
        history = [row[metric] for row in rows if row[phase] == rows[-1][phase]]
    # comp=None: fastai's own direction for the metric, the rule recipes.lower_is_better states
    return [ResumableEarlyStopping(monitor=recipe.main_metric, comp=None, min_delta=0.0, patience=cfg.early_stop,
                                   history=history)]


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


def schedule_reason(cfg: FitConfig) -> str:
    if cfg.pretrained:
        return "pretrained weights: fine_tune trains the new head for one frozen epoch, then everything"
    return ("no pretrained weights: fit_one_cycle trains every layer from the start "
            "(fine_tune's frozen epoch would only train a random body's head)")


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
    from trainer import files
    from trainer.runs import store

    try:
        yield
    except (KeyboardInterrupt, BadInput, TrainingInterrupted):
        raise
    except Exception as e:
        files.write_text(run_dir / rundir.ERROR_LOG, traceback.format_exc())
        raise TrainingFailed(f"training failed: {type(e).__name__}: {e} (traceback in {run_dir / rundir.ERROR_LOG})") from e


def device_info(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    return {"threads": torch.get_num_threads()}
