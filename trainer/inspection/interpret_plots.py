"""The interpretation's figures, readable from 2 to 100+ classes.

Sizes follow the class count (cells of at least a quarter inch, fonts that fit a cell), and the
decisions that depend on how long the words are (rotating tick labels, printing the numbers) are
taken from the renderer's own text extents, not from character counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trainer.inspection.plots import fit_to_content, text_size, wrap_parts  # noqa: E402
from trainer.files import save_figure  # noqa: E402

MOST_CONFUSED_FROM = 11  # classes: from here on, most_confused.png shows the errors the matrix hides
TITLE_SIZE = 11


def save(fig, path: Path) -> None:
    save_figure(fig, path)
    plt.close(fig)


MAX_SIDE = 40  # inches (4,000 pixels): beyond 160 classes cells shrink rather than the PNG growing without end


def cell_inches(n: int, max_side: float = MAX_SIDE) -> float:
    """Large cells for a few classes, a quarter inch (18 pt: one line of 9-pt text) from 36 classes, and
    smaller only where the matrix would pass `max_side`."""
    return min(max(0.25, min(1.5, 9 / n)), max_side / n)


# not sklearn's ConfusionMatrixDisplay: at its size names and numbers overlap from 10 classes; it writes all n² cells
def confusion_figure(cm, classes: list[str], title: str, normalize: bool = False, max_side: float = MAX_SIDE):
    """counts[actual, predicted] as a heat map, with the numbers where they fit in their cells."""
    n = len(classes)
    values = np.asarray(cm, dtype=float)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    cell = cell_inches(n, max_side)
    fontsize = min(11.0, max(6.0, round(cell * 72 * 0.5)))  # a tick label takes half a cell's height
    side = cell * n
    fig = plt.figure(figsize=(side + 1, side + 1))  # fit_to_content makes room for the words
    ax = fig.add_axes([0.5 / (side + 1), 0.5 / (side + 1), side / (side + 1), side / (side + 1)])
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None, aspect="equal")
    cell_px = cell * fig.dpi
    # side by side when every name fits its column, else upright (never slanted: slanted names overlap)
    widest = max(text_size(fig, name, fontsize)[0] for name in classes)
    step = max(1, math.ceil(1.4 * fontsize / (cell * 72)))  # past max_side: every step-th class is named
    ticks, names = range(0, n, step), classes[::step]
    ax.set_xticks(ticks, names, rotation=0 if widest <= 0.9 * cell_px * step else 90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted", fontsize=TITLE_SIZE)
    ax.set_ylabel("actual", fontsize=TITLE_SIZE)
    annotate_cells(fig, ax, values, normalize, fontsize - 1, cell_px)
    ax.set_title(wrap_parts(fig, title, TITLE_SIZE, max(side, 5.0) * fig.dpi), fontsize=TITLE_SIZE)
    fit_to_content(fig)
    return fig


def cell_text(value: float, normalize: bool) -> str:
    if normalize:
        return f"{value:.2f}".lstrip("0") if 0 < value < 1 else f"{value:g}"
    return f"{int(value)}"


def annotate_cells(fig, ax, values: np.ndarray, normalize: bool, fontsize: float, cell_px: float) -> None:
    """Each cell's number, at the largest size (down to 6 pt) at which the widest one fits its cell;
    none when even 6 pt does not fit. With many classes empty cells stay blank so the errors stand out."""
    n = len(values)
    texts = {(a, p): cell_text(values[a, p], normalize) for a in range(n) for p in range(n)
             if values[a, p] > 0 or n <= 10}
    if not texts:
        return
    for size in np.arange(fontsize, 5.5, -0.5):
        width, height = max(text_size(fig, t, size) for t in set(texts.values()))
        if width <= 0.85 * cell_px and height <= 0.85 * cell_px:
            break
    else:
        return  # the colours alone: numbers would spill over their cells
    threshold = values.max() / 2
    for (a, p), text in texts.items():
        ax.text(p, a, text, ha="center", va="center", fontsize=size,
                color="white" if values[a, p] > threshold else "black")


def plot_confusion(cm, classes: list[str], title: str, path: Path, normalize: bool = False) -> None:
    save(confusion_figure(cm, classes, title, normalize), path)


def most_confused_figure(pairs: list[tuple[str, str, int]], title: str, top: int = 20):
    """The `top` most frequent (actual -> predicted) errors as horizontal bars, largest first."""
    pairs = pairs[:top]
    bar = 0.3  # inches per pair
    width, height = 6, bar * max(len(pairs), 1) + 1
    fig = plt.figure(figsize=(width, height))  # fit_to_content makes room for the words
    ax = fig.add_axes([0.5 / width, 0.5 / height, 5 / width, bar * max(len(pairs), 1) / height])
    counts = [count for _, _, count in pairs]
    ax.barh(range(len(pairs)), counts, color="tab:blue")
    ax.set_yticks(range(len(pairs)), [f"{actual} → {predicted}" for actual, predicted, _ in pairs], fontsize=9)
    ax.invert_yaxis()  # the largest on top
    for row, count in enumerate(counts):
        ax.text(count, row, f" {count}", va="center", fontsize=8)
    ax.set_xlim(0, max(counts, default=1) * 1.15)  # room for the counts
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("validation images (actual → predicted)", fontsize=10)
    ax.set_title(wrap_parts(fig, title, TITLE_SIZE, 7 * fig.dpi), fontsize=TITLE_SIZE)
    fit_to_content(fig)
    return fig


def plot_most_confused(pairs, title: str, path: Path) -> None:
    save(most_confused_figure(pairs, title), path)


def tile_title(row: dict) -> str:
    return (f"actual: {row['actual']}\npredicted: {row['predicted']}\n"
            f"loss {row['loss']:.2f} · p(actual) {row['p_actual']:.2f} · p(predicted) {row['p_predicted']:.2f}")


def top_losses_figure(top: list[dict], title: str, fontsize: float = 9):
    """The images the model got most wrong, each titled with both classes, its loss and both probabilities."""
    from PIL import Image

    cols = max(1, math.ceil(math.sqrt(len(top))))
    rows = max(1, math.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, squeeze=False)
    widest = max((text_size(fig, line, fontsize)[0] for row in top for line in tile_title(row).split("\n")),
                 default=0)
    tile = max(2.6, widest / fig.dpi + 0.3)  # inches: the longest class name decides
    fig.set_size_inches(tile * cols, (tile + 0.8) * rows + 0.8)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, top):
        with Image.open(row["path"]) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(tile_title(row), fontsize=fontsize)
    fig.suptitle(wrap_parts(fig, f"{title} · p: the probability the model gave a class", TITLE_SIZE,
                            0.9 * tile * cols * fig.dpi), fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def plot_top_losses(top: list[dict], title: str, path: Path) -> None:
    save(top_losses_figure(top, title), path)


def label_confusions_figure(cms, labels: list[str], title: str):
    """A multi-label model's confusion: one 2x2 matrix per label (rows actual no/yes, columns predicted no/yes),
    in a grid of about √n columns: 20 labels are 5 x 4 panels of 2 inches, each titled with its label."""
    cms = np.asarray(cms)
    n = len(labels)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    panel = 2.0  # inches: the four counts and a label's name fit at 9 pt
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(panel * cols + 0.6, (panel + 0.35) * rows + 0.9))
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, label, cm in zip(axes.flat, labels, cms):
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
        for (actual, predicted), count in np.ndenumerate(cm):
            dark = count > cm.max() / 2
            ax.text(predicted, actual, str(int(count)), ha="center", va="center", fontsize=10,
                    color="white" if dark else "black")
        ax.set_xticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_yticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_xlabel("predicted", fontsize=8, labelpad=1)
        ax.set_ylabel("actual", fontsize=8, labelpad=1)
        shown = label if text_size(fig, label, 9)[0] <= panel * fig.dpi * 0.9 else label[:18] + "…"
        ax.set_title(shown, fontsize=9)
    fig.suptitle(wrap_parts(fig, title, TITLE_SIZE, 0.95 * (panel * cols + 0.6) * fig.dpi), fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def plot_label_confusions(cms, labels: list[str], title: str, path: Path) -> None:
    save(label_confusions_figure(cms, labels, title), path)
