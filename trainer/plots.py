"""Headless plots, written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from trainer.runs import save_figure  # noqa: E402


def plot_history(run_log, title: str, path: Path, best: dict | None = None) -> None:
    """Loss curves (train per batch, valid per epoch) beside each metric per epoch. The shaded band
    is the train/valid gap at each epoch's end (overfitting widens it); a dashed line marks the
    epoch with the best validation metric (`best`: epoch, metric, value)."""
    rows = [dict(zip(run_log.header, row)) for row in run_log.rows]
    metric_names = [n for n in run_log.names if n not in ("train_loss", "valid_loss")]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(range(1, len(run_log.batch_losses) + 1), run_log.batch_losses, label="train (smoothed)", lw=1)
    loss_ax.plot(run_log.epoch_ends, [r["valid_loss"] for r in rows], "o-", label="valid")
    train_at_ends = [r["train_loss"] for r in rows]
    loss_ax.fill_between(run_log.epoch_ends, train_at_ends, [r["valid_loss"] for r in rows], color="tab:red",
                         alpha=0.12, label=f"train/valid gap (last: {rows[-1]['valid_loss'] - train_at_ends[-1]:+.3f})")
    losses = run_log.batch_losses + [r["valid_loss"] for r in rows]
    if min(losses) > 0 and max(losses) / min(losses) > 30:  # from scratch, early valid losses dwarf the rest
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="batch", ylabel="loss", title="loss")
    loss_ax.legend()
    epochs = [r["epoch"] for r in rows]
    for name in metric_names:
        values = [r[name] for r in rows]
        metric_ax.plot(epochs, values, "o-", label=name)
        if len(rows) <= 12:  # few points: print their values too
            for epoch, value in zip(epochs, values):
                metric_ax.annotate(f"{value:.4f}", (epoch, value), textcoords="offset points", xytext=(0, 7),
                                   ha="center", fontsize=8)
    if best:
        metric_ax.axvline(best["epoch"], color="grey", ls="--", lw=1,
                          label=f"best {best['metric']} {best['value']:.4f} (epoch {best['epoch']})")
    metric_ax.margins(y=0.15)  # room for the value labels under the title
    metric_ax.set(xlabel="epoch", title="validation metrics")
    metric_ax.set_xticks(epochs)
    metric_ax.legend()
    metric_ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def save_batch(dls, path: Path, title: str, max_n: int = 16) -> None:
    """What the model is fed: a grid of training images with their labels (fastai's show_batch)."""
    dls.show_batch(max_n=max_n, figsize=(8, 8))
    _save_current(path, title)


def save_results(learn, path: Path, title: str, max_n: int = 16) -> None:
    """What the model says: validation images with actual / predicted (fastai's show_results)."""
    learn.show_results(max_n=max_n, figsize=(8, 8))
    _save_current(path, title)


def _save_current(path: Path, title: str) -> None:
    fig = plt.gcf()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
