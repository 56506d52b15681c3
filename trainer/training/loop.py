"""The training loop itself: fastai's schedule (fine_tune or fit_one_cycle) with the run's callbacks, each
independent of the others: the run log, checkpoints, early stopping, signals, TensorBoard, activation stats."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from trainer.config import FitConfig
from trainer.data.cache import swapped_dls
from trainer.errors import TrainingInterrupted
from trainer.extras import require
from trainer.recipes import Recipe
from trainer.runs import rundir
from trainer.training.checkpoint import Checkpoints, Interrupted, ResumableEarlyStopping, restore_rng, stop_on_signals
from trainer.training.distributed import distributed, signal_sync
from trainer.training.events import Events


@dataclass(frozen=True)
class Trained:
    """What training itself produced, beside the run log."""

    best: dict | None  # {"epoch", "metric", "value"} of the best epoch by the recipe's main metric
    wall_seconds: float
    stopped_early: bool
    activation_stats: object = None  # fastai's ActivationStats, with --activation-stats


def run_training(p, run_dir: Path, run_log, events: Events, resumed: dict | None) -> Trained:
    """The schedule, with the run's callbacks (run log, checkpoints, early stopping, signals)."""
    checkpoints = Checkpoints(run_dir, run_log, p.recipe.main_metric, events, best=resumed and resumed["best"])
    flag, extra = signal_target(p, checkpoints)
    stats = activation_stats(p)
    callbacks = [run_log, checkpoints, *early_stopping(p.cfg, p.recipe, run_log.header, run_log.rows), *extra,
                 *([tensorboard_callback(run_dir / rundir.TENSORBOARD)] if p.cfg.tensorboard else []),
                 *([stats] if stats else []), *mixup(p.cfg)]
    start = time.perf_counter()
    # A signal raises checkpoint.Interrupted at a batch boundary; training.stopping says what it left on disk.
    with p.learn.added_cbs(callbacks), stop_on_signals(flag), \
            swapped_dls(p.learn, p.data.fast_dls), distributed(p.learn, p.world, p.data.dls.device):
        if resumed:
            restore_rng(resumed, p.learn.dls.train)  # last: nothing draws from them before training goes on
        run_schedule(p.learn, p.cfg, resumed["epochs_done"] if resumed else 0)
    stopped_early = p.cfg.early_stop is not None and len(run_log.rows) < run_log.epochs_total
    if stopped_early:
        events.note(f"early stop: {p.recipe.main_metric} did not improve for {p.cfg.early_stop} epoch(s); "
                    f"stopped after epoch {len(run_log.rows)} of {run_log.epochs_total}")
    return Trained(checkpoints.best, time.perf_counter() - start, stopped_early, stats)


def follow(p, resumed: dict | None = None) -> tuple[None, None]:
    """Ranks 1..N-1: the same schedule as rank 0, in lockstep, writing nothing."""
    flag = signal_sync()
    history = (resumed["metrics"]["header"], resumed["metrics"]["rows"]) if resumed else ([], [])
    try:
        with p.learn.added_cbs([*early_stopping(p.cfg, p.recipe, *history), flag, *mixup(p.cfg)]), stop_on_signals(flag), \
                swapped_dls(p.learn, p.data.fast_dls), distributed(p.learn, p.world, p.data.dls.device):
            if resumed:
                restore_rng(resumed, p.learn.dls.train)
            # every rank sees the same gathered metrics: they stop together
            run_schedule(p.learn, p.cfg, resumed["epochs_done"] if resumed else 0)
    except Interrupted as stop:
        raise TrainingInterrupted("", stop.signum) from None  # rank 0 says what happened
    return None, None


def epochs_total(cfg: FitConfig) -> int:
    """Epochs the schedule runs: fine_tune adds its frozen one."""
    return cfg.epochs + (1 if schedule_of(cfg) == "fine_tune" else 0)


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


def signal_target(p, checkpoints) -> tuple[object, list]:
    """What a signal sets (Checkpoints itself, or, distributed, a flag every rank shares) and the callbacks
    that adds."""
    if not p.world.launched:
        return checkpoints, []
    flag = signal_sync(checkpoints)
    return flag, [flag]


def early_stopping(cfg: FitConfig, recipe: Recipe, header: list[str] = (), rows: list[list] = ()) -> list:
    """fastai's EarlyStoppingCallback on the recipe's main metric, with --early-stop's patience; a resumed run
    replays the epochs done (`header`, `rows` of metrics.csv) so it stops where the uninterrupted run would."""
    if not cfg.early_stop:
        return []
    history = []
    if rows:  # the epochs of the fit being continued (fine_tune's unfrozen fit does not see the frozen epoch)
        metric, phase = header.index(recipe.main_metric), header.index("phase")
        history = [row[metric] for row in rows if row[phase] == rows[-1][phase]]
    # comp=None: fastai's own direction for the metric, the rule recipes.lower_is_better states
    return [ResumableEarlyStopping(monitor=recipe.main_metric, comp=None, min_delta=0.0, patience=cfg.early_stop,
                                   history=history)]


def mixup(cfg: FitConfig) -> list:
    """fastai's MixUp with --mixup's alpha: each training batch blended with a shuffled copy of itself (images
    and targets alike); validation batches are left alone."""
    if not cfg.mixup:
        return []
    from fastai.callback.mixup import MixUp

    return [MixUp(alpha=cfg.mixup)]


def activation_stats(p):
    if not p.cfg.activation_stats:
        return None
    from trainer.training.activations import activation_callback

    return activation_callback(p.learn.model)


def tensorboard_callback(log_dir: Path | None):
    """fastai's TensorBoardCallback: losses, metrics and every optimiser hyper-parameter (lr, mom) per step."""
    require("tensorboard", "--tensorboard")
    from fastai.callback.tensorboard import TensorBoardCallback

    # No graph tracing (fails under mixed precision) and no prediction images: scalars only.
    return log_dir and TensorBoardCallback(log_dir=str(log_dir), trace_model=False, log_preds=False)
