"""What a trained run leaves behind, in the order fit writes it: the best epoch's weights (--save-best), the
exported model, the plots, the summary and interpretation, and summary.json last, marking the run done."""

from __future__ import annotations

from pathlib import Path

import torch
from fastai.learner import load_model

from trainer import files
from trainer.inspection.interpret import analyse, write_interpretation
from trainer.inspection.plots import plot_history, save_results
from trainer.model.learner import export_weights
from trainer.runs import rundir, store
from trainer.runs.report import write_report
from trainer.training.loop import Trained


def keep_best(p, run_dir: Path, run_log, best: dict | None, events) -> dict:
    """--save-best (and --early-stop): load the best epoch's weights; its row of metrics.csv is the result."""
    if not best or best["epoch"] == run_log.last["epoch"]:
        return run_log.last
    files.verify_digest(run_dir / rundir.BEST)
    load_model(run_dir / rundir.BEST, p.learn.model, None, with_opt=False, device=p.learn.dls.device)
    events.note(f"keeping epoch {best['epoch']}'s weights (best {p.recipe.main_metric})")
    return dict(zip(run_log.header, run_log.rows[best["epoch"] - 1]))


def export_model(p, run_dir: Path) -> None:
    """model.safetensors + model.json (what trainer loads), model.pkl (for fastai users); `latest` moves."""
    p.learn.to_contiguous(to_fp32=True)  # the exported model is fp32 in the default memory format: it runs anywhere
    with files.atomic_path(run_dir / rundir.MODEL_PICKLE) as tmp:
        p.learn.export(tmp)
    export_weights(p.learn, run_dir, p.cfg, p.recipe)
    store.point_latest(run_dir.parent, run_dir)  # `latest` names the newest run with a model


def write_plots(p, run_dir: Path, run_log, trained: Trained, title: str) -> None:
    if trained.activation_stats is not None:
        from trainer.training.activations import write_activations

        write_activations(trained.activation_stats, run_dir, f"{title} · activations")
    plot_history(run_log, title, run_dir / rundir.HISTORY, best=trained.best)
    save_results(p.learn, run_dir / rundir.RESULTS, f"{title} · validation: actual / predicted", display_names(p))


def summarise(p, run_dir: Path, run_log, trained: Trained, final_row: dict, resumed: dict | None) -> dict:
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


def interpret_validation(p, run_dir: Path, title: str, top_k: int, progress=None) -> dict:
    """The confusion matrix, top losses and per-class report, from the learner that was just trained; `progress`
    hears its inference (the "predict" step)."""
    analysis = analyse(p.learn, (p.data.fast_dls or p.data.dls).valid, p.data.dls.valid_ds.items,
                       list(display_names(p).values()), progress=progress)
    return write_interpretation(analysis, run_dir, title, top_k)


def finish(run_dir: Path, summary: dict) -> None:
    """summary.json marks the run done; the report shows it; the checkpoint is no longer needed."""
    files.write_json(run_dir / rundir.SUMMARY, summary)
    write_report(run_dir)
    (run_dir / rundir.LAST).unlink(missing_ok=True)  # only --resume needs it; model.pkl and best.pth stay
    files.digest_path(run_dir / rundir.LAST).unlink(missing_ok=True)


def display_names(p) -> dict:
    """vocab -> the name people read, for fastai's own plot titles."""
    return dict(zip(map(str, p.data.dls.vocab), p.recipe.display_names(p.data.dls.vocab)))


def device_info(device) -> dict:
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    return {"threads": torch.get_num_threads()}
