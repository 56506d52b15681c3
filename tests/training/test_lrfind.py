"""lr_find's suggestions when the loss diverges early (a short curve)."""

from __future__ import annotations

import math

import pytest
import torch
from fastai.callback.schedule import minimum, slide, steep, valley

from trainer.training.lrfind import tolerant


def short_curve(points: int = 13):
    """What lr_find records when the loss diverges after a few iterations: a dip, then a climb."""
    lrs = torch.logspace(-7, 1, points)
    losses = torch.tensor([2.3 - 0.1 * i if i < points // 2 else 1.7 + 0.5 * (i - points // 2) for i in range(points)])
    return lrs, losses


def test_a_short_curve_gives_every_suggestion_that_fits_it():
    lrs, losses = short_curve()
    with pytest.raises(IndexError):
        slide(lrs, losses, 100)  # fastai's slide looks 15 points back
    lr, point = tolerant(slide)(lrs, losses, 100)
    assert math.isnan(lr) and tolerant(slide).__name__ == "slide"
    for func in (minimum, steep, valley):
        assert tolerant(func)(lrs, losses, 100)[0] == func(lrs, losses, 100)[0]


@pytest.mark.parametrize("points", [0, 1, 2, 4])
def test_a_curve_too_short_to_read_gives_no_suggestion_and_no_crash(points):
    # lr_find keeps recorder[num_it//10:-5]: a loss that diverges by iteration 16 leaves 0-1 points,
    # where fastai's slide raises ValueError, steep IndexError, and valley returns the start rate
    lrs, losses = short_curve(points)
    for func in (minimum, steep, valley, slide):
        assert math.isnan(tolerant(func)(lrs, losses, 100)[0]), (func.__name__, points)
