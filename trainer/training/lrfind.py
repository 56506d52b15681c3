"""`trainer lr-find`: fastai's learning-rate finder with all four suggestion functions.

fastai 2.8 returns only `valley` unless suggestion functions are passed, so the course's
`lr_min, lr_steep = learn.lr_find()` no longer unpacks; here every suggestion is kept.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np

from trainer.files import save_figure, write_json
from trainer.options import LR_SUGGESTIONS as SUGGESTIONS
from trainer.runs import rundir


def find_lr(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100) -> dict:
    from fastai.callback.schedule import minimum, slide, steep, valley

    funcs = [tolerant(f) for f in (minimum, steep, valley, slide)]
    with scratch_path(learn):
        suggested = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False,
                                  suggest_funcs=funcs)
    lrs = [float(lr) for lr in learn.recorder.lrs]
    losses = [float(loss) for loss in learn.recorder.losses]
    values = {name: float(getattr(suggested, name)) for name in SUGGESTIONS}
    return {
        "suggestions": {name: value for name, value in values.items() if math.isfinite(value)},
        "unavailable": [name for name, value in values.items() if not math.isfinite(value)],
        "start_lr": start_lr, "end_lr": end_lr, "num_it": num_it,
        "lrs": lrs, "losses": losses,
    }


MIN_CURVE_POINTS = 5  # fewer points than this have no shape to read a suggestion from


@contextlib.contextmanager
def scratch_path(learn):
    """fastai's lr_find saves the model under learn.path/models/ and restores it, leaving the folder behind:
    give it a temporary path instead (no models/ in the run directory or the working directory)."""
    saved = learn.path
    with tempfile.TemporaryDirectory(prefix="trainer-lr-find-") as tmp:
        learn.path = Path(tmp)
        try:
            yield
        finally:
            learn.path = saved


def tolerant(func):
    """A fastai suggestion function that gives NaN instead of a meaningless rate or a crash when the loss
    diverged so early that too few points were recorded: on one point valley returns the start rate,
    steep and minimum raise IndexError on none, slide looks 15 points back (IndexError) and takes a
    gradient (ValueError under two points)."""

    def suggest(lrs, losses, num_it):
        if len(losses) < MIN_CURVE_POINTS:
            return math.nan, (math.nan, math.nan)
        try:
            return func(lrs, losses, num_it)
        except (IndexError, ValueError):
            return math.nan, (math.nan, math.nan)

    suggest.__name__ = func.__name__  # fastai names each suggestion after its function
    return suggest


def write_lr_find(result: dict, run_dir: Path, title: str) -> None:
    write_json(run_dir / rundir.LR_FIND_JSON, result)
    import matplotlib.pyplot as plt

    fig = lr_find_figure(result, title)
    save_figure(fig, run_dir / rundir.LR_FIND_PNG)
    plt.close(fig)


MARKERS = {"minimum": "v", "steep": "o", "valley": "*", "slide": "s"}
MARKER_SIZE = 11  # points


def lr_find_figure(result: dict, title: str):
    """The loss against the learning rate, each suggestion marked and labelled without overlaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, losses = np.array(result["lrs"]), np.array(result["losses"])
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(lrs, losses, lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)")
    ax.set_title(title, fontsize=10)
    points = [(name, lr, float(np.interp(np.log10(lr), np.log10(lrs), losses)))
              for name, lr in result["suggestions"].items() if math.isfinite(lr) and len(lrs) > 1]
    if len(losses) > 1:  # the divergence at the end would flatten the interesting part
        low = min([losses.min(), *(loss for _, _, loss in points)])
        high = max([np.percentile(losses, 90), *(loss for _, _, loss in points)])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))
    for name, lr, loss in points:
        ax.plot([lr], [loss], MARKERS.get(name, "o"), markersize=MARKER_SIZE, alpha=0.8)
    ax.grid(alpha=0.3, which="both")
    if not points:  # say so on the plot: an unmarked curve would look like a finder that forgot to mark it
        ax.text(0.5, 0.95, f"no suggestion: the loss diverged after {len(losses)} points; pass --lr",
                transform=ax.transAxes, ha="center", va="top", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7"))
    fig.tight_layout()
    label_suggestions(ax, points)
    return fig


def suggestion_groups(ax, points: list, near_px: float = 24) -> list[list]:
    """Suggestions whose markers (nearly) coincide on screen, grouped (left to right)."""
    groups: list[list] = []
    for point in sorted(points, key=lambda p: p[1]):
        x, y = ax.transData.transform((point[1], point[2]))
        if groups and any(np.hypot(x - gx, y - gy) < near_px for gx, gy in
                          (ax.transData.transform((q[1], q[2])) for q in groups[-1])):
            groups[-1].append(point)
        else:
            groups.append([point])
    return groups


def group_label(group: list) -> str:
    """'steep = valley 1.7e-03' for suggestions at the same rate; one line per distinct rate."""
    by_value: dict[str, list[str]] = {}
    for name, lr, _ in group:
        by_value.setdefault(f"{lr:.1e}", []).append(name)
    return "\n".join(f"{' = '.join(names)} {value}" for value, names in by_value.items())


# (dx, dy) in points from the marker, tried in order: close first, then further up or down
OFFSETS = [(sx * 9, sy * r) for r in (10, 30, 50, 70, 90) for sy in (1, -1) for sx in (1, -1)]


def label_suggestions(ax, points: list) -> None:
    """One label per group of coinciding suggestions, at the first offset where it overlaps no other
    label or marker and stays inside the axes (measured with the renderer's text extents); where none
    does, at the last offset tried."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    half = MARKER_SIZE * fig.dpi / 72 / 2 + 1  # a marker's half width, in pixels
    markers = [Bbox.from_bounds(*(ax.transData.transform((lr, loss)) - half), 2 * half, 2 * half)
               for _, lr, loss in points]
    area = ax.get_window_extent(renderer)
    taken: list = list(markers)
    for group in suggestion_groups(ax, points):
        _, lr, loss = group[0]
        for dx, dy in OFFSETS:
            label = ax.annotate(group_label(group), (lr, loss), xytext=(dx, dy), textcoords="offset points",
                                ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top", fontsize=9,
                                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7", alpha=0.9),
                                arrowprops=dict(arrowstyle="-", color="0.4", lw=0.7) if abs(dy) > 10 else None)
            label.update_positions(renderer)  # where the offset puts it, before it is ever drawn
            box = Text.get_window_extent(label, renderer).padded(3)  # the words, without the connector
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(box.overlaps(other) for other in taken):
                break
            if (dx, dy) != OFFSETS[-1]:
                label.remove()
        taken.append(box)
