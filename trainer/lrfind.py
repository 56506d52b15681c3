"""`trainer lr-find`: fastai's learning-rate finder with all four suggestion functions.

fastai 2.8 returns only `valley` unless suggestion functions are passed, so the course's
`lr_min, lr_steep = learn.lr_find()` no longer unpacks; here every suggestion is kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from trainer.runs import save_figure, write_json

SUGGESTIONS = ("minimum", "steep", "valley", "slide")


def find_lr(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100) -> dict:
    from fastai.callback.schedule import minimum, slide, steep, valley

    funcs = [tolerant(f) for f in (minimum, steep, valley, slide)]
    suggested = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False, suggest_funcs=funcs)
    lrs = [float(lr) for lr in learn.recorder.lrs]
    losses = [float(loss) for loss in learn.recorder.losses]
    values = {name: float(getattr(suggested, name)) for name in SUGGESTIONS}
    return {
        "suggestions": {name: value for name, value in values.items() if math.isfinite(value)},
        "unavailable": [name for name, value in values.items() if not math.isfinite(value)],
        "start_lr": start_lr, "end_lr": end_lr, "num_it": num_it,
        "lrs": lrs, "losses": losses,
    }


def tolerant(func):
    """A fastai suggestion function that gives NaN instead of failing when the loss diverged so early that
    too few points were recorded for it (slide looks 15 points back, and fails on a 13-point curve)."""

    def suggest(lrs, losses, num_it):
        try:
            return func(lrs, losses, num_it)
        except IndexError:
            return math.nan, (math.nan, math.nan)

    suggest.__name__ = func.__name__  # fastai names each suggestion after its function
    return suggest


def write_lr_find(result: dict, run_dir: Path, title: str) -> None:
    write_json(run_dir / "lr_find.json", result)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, losses = np.array(result["lrs"]), np.array(result["losses"])
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(lrs, losses, lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)", title=title)
    if len(losses) > 1:  # the divergence at the end would flatten the interesting part
        low, high = losses.min(), np.percentile(losses, 90)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))
    markers = {"minimum": "v", "steep": "o", "valley": "*", "slide": "s"}
    for name, lr in result["suggestions"].items():
        if not math.isfinite(lr) or len(lrs) < 2:
            continue
        loss = float(np.interp(np.log10(lr), np.log10(lrs), losses))
        ax.plot([lr], [loss], markers[name], markersize=11, label=f"{name}: {lr:.2e}")
        ax.annotate(name, (lr, loss), textcoords="offset points", xytext=(6, 8), fontsize=9)
    ax.legend(title="suggestions")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, run_dir / "lr_find.png")
    plt.close(fig)
