"""`trainer fit`, `trainer fit --resume` and `trainer lr-find` as library calls that publish events.

Read top to bottom: prepare (options, data, learner; nothing written yet), start the run directory, with
--lr review wait at the lr_find gate for a person's choice (training.gate), train, write what the run leaves
behind. Every function takes an `Events` and never a console: the caller subscribes whatever should see the
run (the terminal, a test, the service); only the gate's terminal question reads stdin.
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from trainer import files
from trainer.config import FitConfig
from trainer.data.cache import swapped_dls
from trainer.data.images import forget_presized_copies
from trainer.data.locations import dataset_version
from trainer.errors import BadInput, CannotWrite, TrainingFailed, TrainingInterrupted
from trainer.inspection.plots import save_batch
from trainer.options import LR_FIND_TAKES_NO_LR
from trainer.runs import rundir, store
from trainer.runs.report import write_report
from trainer.runs.split import check_split, split_rows, split_sha256, write_split
from trainer.tracking.mlflow import MlflowTracker
from trainer.tracking.mlflow import require as require_mlflow
from trainer.training import checkpoint, gate
from trainer.training.distributed import world_from_env
from trainer.training.events import Events, MetricsFile
from trainer.training.loop import epochs_total, follow, run_training, schedule_of, schedule_reason, tensorboard_callback
from trainer.training.lrfind import find_lr, write_lr_find
from trainer.training.outputs import (device_info, display_names, export_model, finish, interpret_validation,
                                      keep_best, summarise, write_plots)
from trainer.training.prepare import Prepared, prepare
from trainer.training.progress import RunLog
from trainer.training.stopping import Stop, stopping


def forgets_presized_copies(command):
    """A training command that leaves no presized copies behind in the process (images.RGBImage reads them
    while the run lasts), whether it ends, fails or is interrupted."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        finally:
            forget_presized_copies()

    return run


@forgets_presized_copies
def fit(cfg: FitConfig, events: Events) -> tuple[Path | None, dict | None]:
    """Train a new run: (run directory, summary); (None, None) on distributed ranks other than 0."""
    with stopping("fit", events) as stop:
        stop.quiet = not world_from_env().main
        if cfg.tensorboard:
            tensorboard_callback(None)  # a missing package is bad input: before anything is written
        store.check_name_free(Path(cfg.out), cfg.recipe, cfg.name)  # refused now, not after the data is read
        if cfg.mlflow:
            require_mlflow()
        p = prepare(cfg, events)
        if not p.world.main:
            return follow(p)
        run_dir, config = start_run(p, "fit", stop, schedule=schedule_of(p.cfg), schedule_reason=schedule_reason(p.cfg))
        with failures_logged(run_dir, events):
            if p.cfg.lr == "review":  # the lr_find gate: the rate a person chooses, recorded in config.json
                p = gate.review(p, run_dir, config, events)
            return run_dir, train(p, run_dir, events, stop)


@forgets_presized_copies
def resume(run_dir: Path, events: Events, **given) -> tuple[Path | None, dict | None]:
    """Continue an interrupted run from its last completed epoch, with the same options and schedule
    (`given`: device/precision, where and how to continue when not as the run asked; interpret, top_k,
    tensorboard, mlflow, checked against the run's own; the MLflow run goes on too)."""
    config, cfg = checkpoint.resumable(run_dir, given)
    if cfg.mlflow:
        require_mlflow()
    with stopping("fit --resume", events) as stop:
        stop.quiet, stop.run_dir = not world_from_env().main, run_dir  # the run's own: never removed
        stop.resume = resume_command(run_dir, world_from_env())
        p = prepare(cfg, events)
        check_split(run_dir, config, p.data.dls, p.data.path)  # the same validation set, or a clear refusal
        state = checkpoint.restore(run_dir, p.learn, p.data.dls.device)
        if not p.world.main:
            return follow(p, state)
        p.learn.path = run_dir
        with failures_logged(run_dir, events):
            record_resume(p, run_dir, config, state)
            events.note(f"resuming {run_dir} after epoch {state['epochs_done']}")
            return run_dir, train(p, run_dir, events, stop, resumed=state)


def resume_command(run_dir: Path, world) -> str:
    return f"trainer fit --resume {run_dir}{f' --nproc {world.size}' if world.launched else ''}"


@forgets_presized_copies
def lr_find(cfg: FitConfig, events: Events, start_lr=1e-7, end_lr=10.0, num_it=100) -> tuple[Path, dict]:
    """fastai's lr_find into a run directory of its own: lr_find.png/.json and the four suggestions."""
    for flag, rate in (("--start-lr", start_lr), ("--end-lr", end_lr)):
        if not math.isfinite(rate):
            raise BadInput(f"{flag} must be a finite number, got {rate:g}")
    if not 0 < start_lr < end_lr:
        raise BadInput(f"--start-lr ({start_lr:g}) must be positive and below --end-lr ({end_lr:g})")
    if num_it < 10:
        raise BadInput(f"--num-it must be at least 10 (fastai drops the first and last points), got {num_it}")
    if cfg.lr is not None:
        raise BadInput(LR_FIND_TAKES_NO_LR)
    if world_from_env().size > 1:
        raise BadInput("lr-find runs in one process: start it without torchrun or --nproc")
    store.check_name_free(Path(cfg.out), cfg.recipe, cfg.name)
    with stopping("lr-find", events) as stop:
        return find_into_run(cfg, events, stop, start_lr, end_lr, num_it)


def find_into_run(cfg: FitConfig, events: Events, stop: Stop, start_lr, end_lr, num_it) -> tuple[Path, dict]:
    p = prepare(cfg, events)
    run_dir, _ = start_run(p, "lr-find", stop)
    events.publish("run_started", run_dir=str(run_dir), recipe=p.recipe.name, command="lr-find", epochs_total=0,
                   resumed_after=None)
    events.note(f"lr_find from {start_lr:g} to {end_lr:g} over {num_it} iterations, {p.cfg.arch}")
    with failures_logged(run_dir, events), swapped_dls(p.learn, p.data.fast_dls):
        result = find_lr(p.learn, start_lr, end_lr, num_it)
        write_lr_find(result, run_dir, f"{p.recipe.name} · lr_find · run {run_dir.name} · {p.cfg.arch}")
        write_report(run_dir)
    events.publish("lr_find", suggestions=result["suggestions"], points=len(result["losses"]))
    events.publish("finished", run_dir=str(run_dir), summary={"suggestions": result["suggestions"]})
    return run_dir, result


def train(p: Prepared, run_dir: Path, events: Events, stop: Stop, resumed: dict | None = None) -> dict:
    """Train (or go on training), then write the model, plots and summary into `run_dir`; returns the summary.
    Read top to bottom: each step is one function."""
    title = f"{p.recipe.name} · run {run_dir.name} · {p.cfg.arch}"
    total = stop.epochs_total = epochs_total(p.cfg)
    if p.cfg.mlflow:  # rank 0 only (the others never get here): the run's events, from run_started on
        events.subscribe(MlflowTracker(p.cfg.mlflow, run_dir, events))
    events.publish("run_started", run_dir=str(run_dir), recipe=p.recipe.name, command="fit", epochs_total=total,
                   resumed_after=resumed["epochs_done"] if resumed else None)
    if not resumed:
        save_batch(p.data.dls, run_dir / rundir.BATCH, f"{title} · training batch", display_names(p))
    events.note(f"{schedule_of(p.cfg)} for {p.cfg.epochs} epoch(s) at lr {p.cfg.lr:g}, {p.cfg.arch}: "
                f"{schedule_reason(p.cfg)}")
    run_log = training_log(run_dir, p.learn, events, total, resumed)
    trained = run_training(p, run_dir, run_log, events, resumed)
    final_row = keep_best(p, run_dir, run_log, trained.best, events) if p.cfg.save_best else run_log.last
    export_model(p, run_dir)
    write_plots(p, run_dir, run_log, trained, title)
    summary = summarise(p, run_dir, run_log, trained, final_row, resumed)
    if p.cfg.interpret:
        summary["interpretation"] = interpret_validation(p, run_dir, title, p.cfg.top_k, events.publish)
    finish(run_dir, summary)
    events.publish("finished", run_dir=str(run_dir), summary=summary)
    return summary


def training_log(run_dir: Path, learn, events: Events, total: int, resumed: dict | None) -> RunLog:
    """The run log: a RunLog callback publishing rows, and metrics.csv subscribed to them; for --resume, the
    files and the log as the checkpoint has them."""
    run_log = RunLog(events, total)
    rows = []
    if resumed:
        checkpoint.restore_files(run_dir, learn, resumed)
        rows = resumed["metrics"]["rows"]
        run_log.restore(resumed["metrics"]["header"], rows, resumed["run_log"])
    events.subscribe(MetricsFile(run_dir / rundir.METRICS, rows), first=True)
    return run_log


def start_run(p: Prepared, command: str, stop: Stop, **extra) -> tuple[Path, dict]:
    """Create the run directory: config.json (every resolved option), split.csv, what lr_find found."""
    run_dir = stop.run_dir = store.new_run_dir(Path(p.cfg.out), p.recipe.name, p.cfg.name)
    stop.created, stop.resume = True, resume_command(run_dir, p.world)
    p.learn.path = run_dir
    if p.data.skipped:
        files.write_text(run_dir / rundir.SKIPPED, "".join(f"{path}\t{why}\n" for path, why in p.data.skipped))
    rows = split_rows(p.data.dls, p.data.path, p.cfg.label_delim)
    write_split(run_dir, rows)
    if p.lr_found:
        write_lr_find(p.lr_found, run_dir, f"{p.recipe.name} · run {run_dir.name} · {p.cfg.arch} · lr_find")
        # --lr review: chosen at the gate, which rewrites config.json with the rate and who chose it
        extra["lr_find"] = {"suggestions": p.lr_found["suggestions"],
                            "chosen": None if p.cfg.lr == "review" else "valley"}
    config = run_config(p, run_dir, command, split_sha256(rows), **extra)
    files.write_json(run_dir / rundir.CONFIG, config)
    return run_dir, config


def run_config(p: Prepared, run_dir: Path, command: str, split_digest: str, **extra) -> dict:
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
                 "n_train": len(p.data.dls.train_ds), "n_valid": len(p.data.dls.valid_ds),
                 "n_skipped": len(p.data.skipped), "split_sha256": split_digest, "multi_label": p.cfg.multi_label,
                 "decoded_cache": getattr(p.data.fast_dls, "cache_info", None), "resized_cache": p.data.presized,
                 "version": dataset_version(p.data.path)},  # a version of a dataset the service cleaned, or None
        "device": {"name": str(device), "precision": p.cfg.precision, "channels_last": p.precision.channels_last,
                   "precision_reason": p.precision.reason, **device_info(device)},
        "distributed": p.world.to_dict(),
        "environment": store.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def record_resume(p: Prepared, run_dir: Path, config: dict, resumed: dict) -> None:
    """config.json gains a line for each resume: when, after which epoch, where and how it went on."""
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "after_epoch": resumed["epochs_done"],
             "device": p.cfg.device, "precision": p.cfg.precision, "world_size": p.world.size}
    files.write_json(run_dir / rundir.CONFIG, {**config, "resumed": [*config.get("resumed", []), entry]})


@contextmanager
def failures_logged(run_dir: Path, events: Events):
    """Once a run directory exists, a crash becomes exit 1 with its traceback kept in error.log; a file that could
    not be written (a full disk) is one line saying which checkpoint is intact."""
    try:
        yield
    except CannotWrite as e:
        error = f"{e.line}; {checkpoint_note(run_dir)}"
        events.publish("failed", run_dir=str(run_dir), error=error)
        raise CannotWrite(error, e.path, e.errno) from None
    except (KeyboardInterrupt, BadInput, TrainingInterrupted):
        raise
    except Exception as e:
        try:
            files.write_text(run_dir / rundir.ERROR_LOG, traceback.format_exc())
            kept = f"traceback in {run_dir / rundir.ERROR_LOG}"
        except (OSError, BadInput) as unwritten:  # error.log itself on a full disk
            kept = f"no traceback kept: {unwritten}"
        error = f"training failed: {type(e).__name__}: {e} ({kept})"
        events.publish("failed", run_dir=str(run_dir), error=error)
        raise TrainingFailed(error) from e


def checkpoint_note(run_dir: Path) -> str:
    """What a failed write left to go on from: the last checkpoint's epoch and the --resume command, or none."""
    state = checkpoint.read_state(run_dir)
    if state is None or "epochs_done" not in state:
        return "no checkpoint was written: free space (or choose another --out) and start the run again"
    return (f"the last checkpoint (epoch {state['epochs_done']}) is intact: free space and "
            f"`trainer fit --resume {run_dir}`")
