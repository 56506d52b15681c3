"""Headless plots, written atomically, and the layout helpers that keep their text readable."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from trainer.files import save_figure  # noqa: E402


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


def save_batch(dls, path: Path, title: str, names: dict | None = None, max_n: int = 16) -> None:
    """What the model is fed: a grid of training images with their labels (fastai's show_batch).
    `names`: vocab -> display name, for the titles fastai writes from the vocab."""
    dls.show_batch(max_n=max_n, figsize=(8, 8))
    _save_current(path, title, names)


def save_results(learn, path: Path, title: str, names: dict | None = None, max_n: int = 16) -> None:
    """What the model says: validation images with actual / predicted (fastai's show_results)."""
    learn.show_results(max_n=max_n, figsize=(8, 8))
    _save_current(path, title, names)


def _save_current(path: Path, title: str, names: dict | None) -> None:
    fig = plt.gcf()
    for ax in fig.axes if names else []:  # fastai titles each image with its label(s), one per line
        ax.title.set_text("\n".join(names.get(line, line) for line in ax.get_title().split("\n")))
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def text_size(fig, text: str, fontsize: float) -> tuple[float, float]:
    """(width, height) in pixels that `text` takes at `fontsize`, as the figure's renderer draws it."""
    from matplotlib.font_manager import FontProperties

    width, height, _ = fig.canvas.get_renderer().get_text_width_height_descent(
        text, FontProperties(size=fontsize), ismath=False)
    return width, height


def fit_to_content(fig, pad: float = 0.15) -> None:
    """Resize `fig` around everything drawn in it (tick labels, titles, annotations) with `pad` inches
    to spare, keeping each axes' size in inches: cells stay as large as they were planned."""
    width, height = fig.get_size_inches()
    boxes = [ax.get_position() for ax in fig.axes]
    content = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, from the renderer's text extents
    new_width, new_height = content.width + 2 * pad, content.height + 2 * pad
    fig.set_size_inches(new_width, new_height)
    for ax, box in zip(fig.axes, boxes):
        left, bottom = box.x0 * width - content.x0 + pad, box.y0 * height - content.y0 + pad
        ax.set_position([left / new_width, bottom / new_height, box.width * width / new_width,
                         box.height * height / new_height])


def wrap_parts(fig, text: str, fontsize: float, max_width_px: float, sep: str = " · ") -> str:
    """`text` with its `sep`-separated parts put on as many lines as it takes to stay under `max_width_px`."""
    lines: list[str] = []
    for part in text.split(sep):
        joined = f"{lines[-1]}{sep}{part}" if lines else part
        if lines and text_size(fig, joined, fontsize)[0] <= max_width_px:
            lines[-1] = joined
        else:
            lines.append(part)
    return "\n".join(lines)
