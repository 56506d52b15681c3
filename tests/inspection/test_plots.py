"""The plots stay readable from 2 to 100 classes: no two texts overlap, every text lies inside the
figure, and the numbers sit inside their cells. Synthetic predictions, no training: fast."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CIFAR_CLASSES
from matplotlib.text import Text
from PIL import Image

from trainer.inspection.interpret_plots import (MAX_SIDE, cell_inches, confusion_figure, most_confused_figure, plot_confusion, save, top_losses_figure)
from trainer.training.lrfind import lr_find_figure

PET_BREEDS = [  # Oxford-IIIT Pet's 37, as pets_breeds labels them
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
    "Ragdoll", "Russian_Blue", "Siamese", "Sphynx", "american_bulldog", "american_pit_bull_terrier",
    "basset_hound", "beagle", "boxer", "chihuahua", "english_cocker_spaniel", "english_setter",
    "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
    "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed", "scottish_terrier",
    "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier"]
CIFAR100 = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
CLASSES = {2: ["airplane", "automobile"], 10: CIFAR_CLASSES, 37: PET_BREEDS, 100: CIFAR100}
TITLE = "pets_breeds · run 20261129-013000 · resnet34"


def synthetic_confusion(n: int, per_class: int, seed: int = 0) -> np.ndarray:
    """counts[actual, predicted] of a model right about 80% of the time, its errors spread unevenly."""
    rng = np.random.default_rng(seed)
    cm = np.zeros((n, n), dtype=int)
    for actual in range(n):
        favourites = rng.choice(n, size=min(n, 4), replace=False)
        for _ in range(per_class):
            cm[actual, actual if rng.random() < 0.8 else rng.choice(favourites)] += 1
    return cm


def drawn_texts(fig) -> list[Text]:
    """The texts a reader sees: titles, axis labels, annotations and the tick labels inside the view
    (matplotlib keeps labels of ticks outside it, or of hidden axes, without drawing them)."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                texts += [axis.label, axis.offsetText]
                texts += [tick.label1 for tick in axis._update_ticks()]  # label1.get_visible(): shown
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def check_readable(fig, tmp_path, min_texts: int) -> list:
    """No two texts overlap and each lies inside the figure, by matplotlib's own extents; the PNG decodes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = drawn_texts(fig)
    assert len(texts) >= min_texts
    boxes = np.array([Text.get_window_extent(t, renderer).extents for t in texts])  # x0, y0, x1, y1 (pixels)
    width, height = fig.canvas.get_width_height()
    outside = [texts[i].get_text() for i in np.flatnonzero(
        (boxes[:, 0] < -0.5) | (boxes[:, 1] < -0.5) | (boxes[:, 2] > width + 0.5) | (boxes[:, 3] > height + 0.5))]
    assert not outside, f"texts outside the {width}x{height} figure: {outside[:5]}"
    overlap = ((boxes[:, None, 0] < boxes[None, :, 2]) & (boxes[None, :, 0] < boxes[:, None, 2])
               & (boxes[:, None, 1] < boxes[None, :, 3]) & (boxes[None, :, 1] < boxes[:, None, 3]))
    np.fill_diagonal(overlap, False)
    pairs = [(texts[i].get_text(), texts[j].get_text()) for i, j in zip(*np.nonzero(np.triu(overlap)))]
    assert not pairs, f"{len(pairs)} overlapping texts, e.g. {pairs[:5]}"
    path = tmp_path / "plot.png"
    save(fig, path)
    with Image.open(path) as image:
        image.load()
        assert min(image.size) >= 100
    return texts


@pytest.mark.parametrize("normalize", [False, True], ids=["counts", "normalized"])
@pytest.mark.parametrize("n", sorted(CLASSES))
def test_confusion_matrix_is_readable(n, normalize, tmp_path):
    classes = CLASSES[n]
    cm = synthetic_confusion(n, per_class=500 if n == 2 else 40)
    fig = confusion_figure(cm, classes, f"{TITLE} · confusion matrix", normalize=normalize)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes == [t.get_text() for t in ax.get_yticklabels()]
    fig.canvas.draw()
    numbers = [t for t in ax.texts if t.get_visible()]
    if n <= 37:  # the numbers fit; each inside its own cell
        assert len(numbers) == (n * n if n <= 10 else np.count_nonzero(cm))
        for t in numbers:
            x, y = t.get_position()
            corners = ax.transData.transform([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)])
            (left, bottom), (right, top) = corners.min(axis=0), corners.max(axis=0)
            x0, y0, x1, y1 = Text.get_window_extent(t).extents
            assert left <= x0 and x1 <= right and bottom <= y0 and y1 <= top, t.get_text()
    check_readable(fig, tmp_path, min_texts=2 * n + 3)


def test_hundreds_of_classes_stay_bounded(tmp_path):
    """Past MAX_SIDE the matrix stops growing (memory) and names every few classes, still without overlaps
    (shown at a 10-inch limit with 200 classes, as 4,000 pixels take long to draw)."""
    assert cell_inches(1000) * 1000 == MAX_SIDE and cell_inches(100) == 0.25
    classes = [f"class_{k:03d}" for k in range(200)]
    fig = confusion_figure(synthetic_confusion(200, 5), classes, TITLE, max_side=10)
    assert max(fig.axes[0].get_window_extent().size) == pytest.approx(1000)
    named = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert named[:2] == ["class_000", "class_003"] and len(named) == 67
    check_readable(fig, tmp_path, min_texts=2 * 67)


def test_cifar_names_stand_upright_and_digits_lie(tmp_path):
    """The issue's case: 'airplane' and 'automobile' ran into each other side by side."""
    cifar = confusion_figure(synthetic_confusion(10, 40), CIFAR_CLASSES, TITLE, normalize=True)
    assert cifar.axes[0].get_xticklabels()[0].get_rotation() == 90
    digits = confusion_figure(synthetic_confusion(10, 40), [str(d) for d in range(10)], TITLE)
    assert digits.axes[0].get_xticklabels()[0].get_rotation() == 0
    save(digits, tmp_path / "digits.png")
    save(cifar, tmp_path / "cifar.png")


@pytest.mark.parametrize("n", sorted(CLASSES))
def test_most_confused_is_readable(n, tmp_path):
    classes = CLASSES[n]
    cm = synthetic_confusion(n, per_class=40)
    pairs = sorted(((classes[a], classes[p], int(cm[a, p])) for a in range(n) for p in range(n)
                    if a != p and cm[a, p]), key=lambda pair: -pair[2])
    fig = most_confused_figure(pairs, f"{TITLE} · most confused pairs")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == f"{pairs[0][0]} → {pairs[0][1]}" and len(labels) == min(20, len(pairs))
    check_readable(fig, tmp_path, min_texts=2 * len(labels))


def curve(valley=1.7e-3, steep=1.7e-3, minimum=1e-2, slide=3e-3) -> dict:
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    losses = 2.3 - 1.6 / (1 + np.exp(-(x + 3) * 2.5)) + np.where(x > -1, (x + 1) ** 2 * 3, 0)
    return {"lrs": lrs.tolist(), "losses": losses.tolist(),
            "suggestions": {"minimum": minimum, "steep": steep, "valley": valley, "slide": slide}}


@pytest.mark.parametrize("suggestions", [
    {}, {"minimum": 1.7e-3, "slide": 1.7e-3}, {"steep": 1e-4, "minimum": 0.05, "slide": 0.02},
    {"steep": 1.5e-3, "valley": 1.9e-3, "slide": 2.2e-3, "minimum": 2.5e-3}],
    ids=["steep-is-valley", "all-four-coincide", "spread", "all-nearby"])
def test_lr_find_labels_never_overlap(suggestions, tmp_path):
    result = curve(**suggestions)
    fig = lr_find_figure(result, "mnist · lr_find · run 20261129-013000 · resnet18")
    labels = [t.get_text() for t in fig.axes[0].texts]
    # every suggestion is named exactly once, with its value
    named = [name for label in labels for line in label.split("\n") for name in line.split(" ")[:-1] if name != "="]
    assert sorted(named) == sorted(result["suggestions"])
    for name, lr in result["suggestions"].items():
        assert any(name in label and f"{lr:.1e}" in label for label in labels)
    if not suggestions:  # the 'stealley'
        assert "steep = valley 1.7e-03" in labels
    check_readable(fig, tmp_path, min_texts=4 + len(labels))


@pytest.mark.parametrize("n", sorted(CLASSES))
def test_top_losses_is_readable(n, tmp_path):
    classes = CLASSES[n]
    longest = sorted(classes, key=len)[-2:]
    top = []
    for k in range(9):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", (64, 48), (20 * k, 100, 150)).save(path)
        top.append({"path": str(path), "actual": longest[k % 2], "predicted": longest[(k + 1) % 2],
                    "loss": 4.0 - k / 3, "p_actual": 0.02 * k, "p_predicted": 0.9 - 0.05 * k})
    fig = top_losses_figure(top, f"{TITLE} · top 9 losses")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 9
    assert f"actual: {longest[0]}\npredicted: {longest[1]}\nloss 4.00 · p(actual) 0.00 · p(predicted) 0.90" == titles[0]
    check_readable(fig, tmp_path, min_texts=10)


def test_plot_confusion_writes_a_png(tmp_path):
    plot_confusion(synthetic_confusion(37, 20), PET_BREEDS, TITLE, tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as image:
        assert image.width > 900 and image.height > 900


@pytest.mark.parametrize("n", [2, 37])
def test_interpretation_files(n, tmp_path):
    """write_interpretation on synthetic predictions: most_confused.png only where a matrix hides the errors."""
    import torch

    from trainer.inspection.interpret import Analysis, write_interpretation

    items = []
    for k in range(n):
        items.append(tmp_path / f"{k}.png")
        Image.new("RGB", (32, 32), (k, 0, 0)).save(items[-1])
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(4 * n, n, generator=generator), dim=1)
    targets = torch.arange(4 * n) % n
    analysis = Analysis(classes=CLASSES[n], items=[items[t] for t in targets.tolist()], probs=probs,
                        targets=targets, losses=-probs[torch.arange(4 * n), targets].log())
    (tmp_path / "most_confused.png").write_bytes(b"stale")
    write_interpretation(analysis, tmp_path, TITLE, top_k=9)
    assert (tmp_path / "most_confused.png").is_file() == (n > 10)
    if n > 10:
        with Image.open(tmp_path / "most_confused.png") as image:
            image.load()
    with open(tmp_path / "confusion_matrix.csv") as f:
        assert f.readline().strip().split(",")[1:] == CLASSES[n]
