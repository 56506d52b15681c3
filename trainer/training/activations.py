"""--activation-stats: how activations evolve layer by layer while training (fastai's ActivationStats).

A well-initialised network keeps each layer's activations near unit scale; a poor one shows
means and stds collapsing toward 0 (vanishing) or growing layer after layer (exploding), and
ReLU layers whose outputs are almost all zero ("dead"). activations.png shows the mean and std
of each tracked layer per batch, and for each layer fastai's "colorful dimension" plot: the
histogram of its activations (x: batch, y: activation value 0-10, colour: log count).
"""

from __future__ import annotations

from pathlib import Path

from trainer.runs import rundir

MAX_LAYERS = 6


def tracked_layers(model) -> list[tuple[str, object]]:
    """Up to MAX_LAYERS of the body's stages (evenly spread, always the first and the last) and the
    head's last layer: enough to see a trend without hooking every conv."""
    from fastai.callback.hook import has_params

    body, head = model[0], model[-1]
    from torch import nn

    stages = [(f"body.{name}", m) for name, m in body.named_children()
              if has_params(m) and not isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(stages) > MAX_LAYERS - 1:
        step = (len(stages) - 1) / (MAX_LAYERS - 2)
        stages = [stages[round(i * step)] for i in range(MAX_LAYERS - 1)]
    last = [(f"head.{name}", m) for name, m in head.named_children() if has_params(m)][-1:]
    return stages + last


def activation_callback(model):
    from fastai.callback.hook import ActivationStats

    layers = tracked_layers(model)
    callback = ActivationStats(modules=[m for _, m in layers], with_hist=True)
    callback.layer_names = [f"{name} ({type(m).__name__})" for name, m in layers]
    return callback


def write_activations(stats, run_dir: Path, title: str) -> dict:
    """activations.png (mean, std, then one colorful-dimension panel per layer) and activations.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.files import save_figure, write_json

    names = stats.layer_names
    n = len(names)
    fig = plt.figure(figsize=(12, 3.2 * (1 + (n + 2) // 3)))
    grid = fig.add_gridspec(1 + (n + 2) // 3, 3)
    mean_ax, std_ax, zero_ax = (fig.add_subplot(grid[0, i]) for i in range(3))
    summary = {}
    for i, name in enumerate(names):
        means, stds, near_zero = (list(map(float, v)) for v in stats.layer_stats(i))
        mean_ax.plot(means, lw=1, label=name)
        std_ax.plot(stds, lw=1, label=name)
        zero_ax.plot(near_zero, lw=1, label=name)
        tail = max(1, len(means) // 10)  # the end of training, averaged over its last tenth
        summary[name] = {"mean": sum(means[-tail:]) / tail, "std": sum(stds[-tail:]) / tail,
                         "near_zero": sum(near_zero[-tail:]) / tail}
    for ax, label in ((mean_ax, "mean"), (std_ax, "std"), (zero_ax, "fraction <= 0.05 (near zero)")):
        ax.set(title=f"activation {label}", xlabel="batch")
    std_ax.set_yscale("log")
    mean_ax.legend(fontsize=7)
    panels = ["mean", "std", "near_zero"]
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        ax.imshow(stats.hist(i), origin="lower", aspect="auto", extent=(0, len(stats.stats), 0, 10))
        ax.set(title=f"{name}: histogram over time", xlabel="batch", ylabel="activation")
        panels.append(name)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, run_dir / rundir.ACTIVATIONS_PNG)
    plt.close(fig)
    result = {"layers": summary, "panels": panels, "batches": len(stats.stats)}
    write_json(run_dir / rundir.ACTIVATIONS_JSON, result)
    return result
