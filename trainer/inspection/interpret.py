"""Where the model fails: confusion matrices, top losses, most confused pairs, per-class report.

One inference pass (`get_preds` with losses) feeds every table and plot. fastai's
ClassificationInterpretation re-runs inference for each of its helpers and has used tens of
GB on a few thousand images (fastai issues 3141, 3266, 3563); here only the predictions,
targets and losses are kept, never the images, and the top-k images are re-read from disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.runs import rundir
from trainer.files import write_csv, write_json


@dataclass
class Analysis:
    classes: list[str]
    items: list[Path]
    probs: torch.Tensor  # N x C
    targets: torch.Tensor  # N
    losses: torch.Tensor  # N

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.targets).float().mean())

    def confusion(self) -> torch.Tensor:
        """counts[actual, predicted]"""
        n = len(self.classes)
        return torch.bincount(self.targets * n + self.predicted, minlength=n * n).reshape(n, n)

    def most_confused(self) -> list[tuple[str, str, int]]:
        cm = self.confusion()
        pairs = [(self.classes[a], self.classes[p], int(cm[a, p]))
                 for a in range(len(self.classes)) for p in range(len(self.classes)) if a != p and cm[a, p] > 0]
        return sorted(pairs, key=lambda pair: -pair[2])

    def per_class(self) -> list[dict]:
        """Precision, recall, F1 and support of each class; 0 where a class is never predicted or never present."""
        return class_report(self.classes, self.targets.numpy(), self.predicted.numpy())

    def top_losses(self, k: int) -> list[dict]:
        losses, order = self.losses.topk(min(k, len(self.losses)))
        predicted = self.predicted
        return [{"path": str(self.items[i]), "actual": self.classes[self.targets[i]],
                 "predicted": self.classes[predicted[i]], "loss": round(float(loss), 6),
                 "p_actual": round(float(self.probs[i, self.targets[i]]), 6),
                 "p_predicted": round(float(self.probs[i, predicted[i]]), 6)}
                for loss, i in zip(losses.tolist(), order.tolist())]


def class_report(classes: list[str], actual, predicted) -> list[dict]:
    """scikit-learn's precision, recall, F1 and support of each class (class indices, or multi-hot rows: each
    label on its own), rounded for the tables; 0 where undefined."""
    from sklearn.metrics import precision_recall_fscore_support  # loaded already: fastai.learner imports it

    table = precision_recall_fscore_support(actual, predicted, labels=range(len(classes)), zero_division=0.0)
    return [{"class": name, "precision": round(float(precision), 4), "recall": round(float(recall), 4),
             "f1": round(float(f1), 4), "support": int(support)}
            for name, precision, recall, f1, support in zip(classes, *table)]


@dataclass
class MultiAnalysis:
    """A multi-label model's validation predictions: each label on its own, predicted above `threshold`."""

    classes: list[str]
    items: list[Path]
    probs: torch.Tensor  # N x C, each label's sigmoid
    targets: torch.Tensor  # N x C, multi-hot
    losses: torch.Tensor  # N: each image's BCE, averaged over its labels
    threshold: float = 0.5

    @property
    def predicted(self) -> torch.Tensor:
        """N x C: 1 where a label is predicted (its probability above the threshold)."""
        return (self.probs > self.threshold).long()

    @property
    def accuracy(self) -> float:
        """fastai's accuracy_multi: the share of (image, label) decisions that are right."""
        return float((self.predicted == self.targets.long()).float().mean())

    def confusions(self) -> torch.Tensor:
        """C x 2 x 2: per label, counts[actual (0 no, 1 yes), predicted (0 no, 1 yes)]."""
        actual, predicted = self.targets.long(), self.predicted
        return torch.stack([torch.bincount(actual[:, k] * 2 + predicted[:, k], minlength=4).reshape(2, 2)
                            for k in range(len(self.classes))])

    def per_class(self) -> list[dict]:
        """Precision, recall, F1 and support (images that have it) of each label; 0 where undefined."""
        return class_report(self.classes, self.targets.long().numpy(), self.predicted.numpy())

    def f1_macro(self) -> float:
        """fastai's F1ScoreMulti (average='macro'): the mean of the labels' F1."""
        report = self.per_class()
        return sum(r["f1"] for r in report) / len(report)

    def names(self, row: torch.Tensor) -> str:
        return " ".join(self.classes[k] for k in row.nonzero().flatten().tolist())

    def mean_probability(self, i: int, row: torch.Tensor) -> float:
        chosen = row.bool()
        return float(self.probs[i][chosen].mean()) if chosen.any() else 0.0

    def top_losses(self, k: int) -> list[dict]:
        """The highest-loss images, with their labels and the predicted ones; p_actual and p_predicted: the mean
        probability the model gave the image's labels, and the predicted ones."""
        losses, order = self.losses.topk(min(k, len(self.losses)))
        predicted, targets = self.predicted, self.targets.long()
        return [{"path": str(self.items[i]), "actual": self.names(targets[i]), "predicted": self.names(predicted[i]),
                 "loss": round(float(loss), 6), "p_actual": round(self.mean_probability(i, targets[i]), 6),
                 "p_predicted": round(self.mean_probability(i, predicted[i]), 6)}
                for loss, i in zip(losses.tolist(), order.tolist())]


def analyse(learn, dl, items, names: list[str], tta: bool = False, progress=None) -> Analysis | MultiAnalysis:
    """`names`: the display name of each class of the model's vocab, in its order. A multi-label learner
    (BCEWithLogitsLossFlat: get_preds gives sigmoids and multi-hot targets) gives a MultiAnalysis. `tta`: the
    probabilities of fastai's test-time augmentation, and each image's loss computed from them. `progress`: a
    publish callable that hears the inference as the "predict" step (trainer.progress)."""
    from trainer.serving.inference import learner_predictions

    probs, targets, losses = learner_predictions(learn, dl, len(items), tta, progress, with_loss=True)
    if losses is None:  # TTA's: from its blended probabilities
        losses = losses_of(probs, targets)
    if targets.ndim == 2:
        threshold = getattr(learn.loss_func, "thresh", 0.5)
        return MultiAnalysis(classes=list(names), items=list(items), probs=probs.float(), targets=targets.long(),
                             losses=losses.float(), threshold=threshold)
    return Analysis(classes=list(names), items=list(items), probs=probs.float(), targets=targets.long(),
                    losses=losses.float())


def losses_of(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each image's loss from probabilities (TTA gives no logits): cross-entropy of its class, or for multi-hot
    targets the binary cross-entropy averaged over the labels, as fastai's losses average them."""
    import torch.nn.functional as F

    probs = probs.float().clamp(1e-7, 1 - 1e-7)
    if targets.ndim == 2:
        return F.binary_cross_entropy(probs, targets.float(), reduction="none").mean(dim=1)
    return F.nll_loss(probs.log(), targets.long(), reduction="none")


def write_label_confusions(analysis: "MultiAnalysis", run_dir: Path, name: str, title: str) -> None:
    """<name>.csv (per label: true negatives, false positives, false negatives, true positives) and <name>.png
    (a grid of 2x2 matrices)."""
    from trainer.inspection.interpret_plots import plot_label_confusions

    cms = analysis.confusions()
    write_csv(run_dir / f"{name}.csv", ["label", "true_negative", "false_positive", "false_negative", "true_positive"],
              [[label, *map(int, cm.flatten())] for label, cm in zip(analysis.classes, cms)])
    plot_label_confusions(cms.numpy(), analysis.classes, f"{title} · one confusion matrix per label "
                                                         f"(threshold {analysis.threshold:g})", run_dir / f"{name}.png")


def write_multi_interpretation(analysis: MultiAnalysis, run_dir: Path, title: str, top_k: int = 9,
                               tta: bool = False) -> dict:
    """A multi-label model's interpretation: the per-label precision/recall/F1 table, one 2x2 confusion matrix
    per label (a grid), and the top losses; the single-label files (one confusion matrix over the classes,
    most confused pairs) would mean nothing here and are removed if an earlier interpretation left them."""
    from trainer.inspection.interpret_plots import plot_top_losses

    for stale in (f"{rundir.CONFUSION}.png", f"{rundir.CONFUSION}.csv", f"{rundir.CONFUSION_NORMALIZED}.png",
                  f"{rundir.MOST_CONFUSED}.csv", f"{rundir.MOST_CONFUSED}.png"):
        (run_dir / stale).unlink(missing_ok=True)
    write_label_confusions(analysis, run_dir, rundir.LABEL_CONFUSION, title)
    report = analysis.per_class()
    write_csv(run_dir / f"{rundir.PER_CLASS}.csv", list(report[0]), [list(r.values()) for r in report])
    f1 = round(analysis.f1_macro(), 6)
    write_json(run_dir / f"{rundir.PER_CLASS}.json", {"accuracy": round(analysis.accuracy, 6), "n": len(analysis.targets),
                                                      "multi_label": True, "threshold": analysis.threshold, "tta": tta,
                                                      "f1_macro": f1, "classes": report})
    top = analysis.top_losses(top_k)
    write_csv(run_dir / f"{rundir.TOP_LOSSES}.csv", ["path", "actual", "predicted", "loss", "p_actual", "p_predicted"],
              [list(r.values()) for r in top])
    plot_top_losses(top, f"{title} · top {len(top)} losses", run_dir / f"{rundir.TOP_LOSSES}.png")
    return {"accuracy": analysis.accuracy, "n": len(analysis.targets), "most_confused": [], "f1_macro": f1,
            "multi_label": True, "tta": tta}


def write_interpretation(analysis: Analysis, run_dir: Path, title: str, top_k: int = 9, tta: bool = False) -> dict:
    """Every table and plot, into the run directory; returns what it printed about. `tta`: the analysis is of
    test-time-augmented predictions (per_class.json and the titles say so)."""
    title = f"{title} · with TTA" if tta else title
    from trainer.inspection.interpret_plots import (MOST_CONFUSED_FROM, plot_confusion, plot_most_confused, plot_top_losses)

    if isinstance(analysis, MultiAnalysis):
        return write_multi_interpretation(analysis, run_dir, title, top_k, tta)
    (run_dir / f"{rundir.LABEL_CONFUSION}.png").unlink(missing_ok=True)  # from a multi-label interpretation
    (run_dir / f"{rundir.LABEL_CONFUSION}.csv").unlink(missing_ok=True)

    classes = analysis.classes
    cm = analysis.confusion()
    write_confusion(cm, classes, title, run_dir, rundir.CONFUSION)
    plot_confusion(cm.numpy(), classes, f"{title} · confusion matrix (each row sums to 1)",
                   run_dir / f"{rundir.CONFUSION_NORMALIZED}.png", normalize=True)
    pairs = analysis.most_confused()
    write_csv(run_dir / f"{rundir.MOST_CONFUSED}.csv", ["actual", "predicted", "count"], [list(p) for p in pairs])
    if len(classes) >= MOST_CONFUSED_FROM and pairs:
        plot_most_confused(pairs, f"{title} · most confused pairs", run_dir / f"{rundir.MOST_CONFUSED}.png")
    else:  # not from an earlier interpretation of other predictions
        (run_dir / f"{rundir.MOST_CONFUSED}.png").unlink(missing_ok=True)
    report = analysis.per_class()
    write_csv(run_dir / f"{rundir.PER_CLASS}.csv", list(report[0]), [list(r.values()) for r in report])
    write_json(run_dir / f"{rundir.PER_CLASS}.json", {"accuracy": round(analysis.accuracy, 6), "n": len(analysis.targets),
                                                      "tta": tta, "classes": report})
    top = analysis.top_losses(top_k)
    write_csv(run_dir / f"{rundir.TOP_LOSSES}.csv", ["path", "actual", "predicted", "loss", "p_actual", "p_predicted"],
              [list(r.values()) for r in top])
    plot_top_losses(top, f"{title} · top {len(top)} losses", run_dir / f"{rundir.TOP_LOSSES}.png")
    return {"accuracy": analysis.accuracy, "n": len(analysis.targets), "most_confused": pairs[:5], "tta": tta}


def write_confusion(cm: torch.Tensor, classes: list[str], title: str, run_dir: Path, name: str) -> None:
    """<name>.csv (actual rows by predicted columns) and <name>.png (counts)."""
    from trainer.inspection.interpret_plots import plot_confusion

    write_csv(run_dir / f"{name}.csv", ["actual \\ predicted", *classes],
              [[label, *map(int, row)] for label, row in zip(classes, cm)])
    plot_confusion(cm.numpy(), classes, f"{title} · confusion matrix (counts)", run_dir / f"{name}.png")


def interpret_run(run_dir: Path, top_k: int = 9, data: str | None = None, bs: int = 64, device: str = "auto",
                  trust_pickle: bool = False, losses: bool = False, tta: bool = False, progress=None) -> dict:
    """Rebuild a run's validation set from its config.json and write the interpretation into the run.
    `tta`: of fastai's test-time-augmented predictions (the run's training augmentation, Learner.tta).
    `losses`: also losses.csv, every training and validation image's loss (one more inference pass, over the
    training set, with the validation transforms: no augmentation). `progress`: a publish callable that hears
    the "scan" and "predict" steps (trainer.progress); None: nothing is shown."""
    from trainer.errors import BadInput
    from trainer.device import resolve_device
    from trainer.serving.inference import add_normalize
    from trainer.model.learner import class_names, inference_learner, load_pickled, load_weights

    recipe, cfg, data_path, build_split = run_data(run_dir, data)
    torch_device = resolve_device(device)
    if trust_pickle:
        learn = load_pickled(run_dir, torch_device)
        classes = [str(c) for c in learn.dls.vocab]
    else:
        model, meta = load_weights(run_dir, torch_device)
        classes = meta["classes"]
    split = build_split(bs, torch_device, progress)
    if [str(c) for c in split.vocab] != classes:
        raise BadInput(f"the classes in {data_path} differ from the model's; pass --data with the run's dataset")
    items = list(split.valid_ds.items)
    if trust_pickle:  # the exported pipeline labels the files
        dl = learn.dls.test_dl(items, with_labels=True, bs=bs, num_workers=0)
    else:  # the recipe's pipeline, plus the normalisation the model was trained with
        add_normalize(split, meta)
        learn, dl = inference_learner(split, model, meta), split.valid
    analysis = analyse(learn, dl, items, class_names(run_dir, classes), tta=tta, progress=progress)
    title = f"{recipe.name} · run {run_dir.name} · {cfg.arch}"
    written = write_interpretation(analysis, run_dir, title, top_k, tta=tta)
    if losses:
        train_items = list(split.train_ds.items)
        source = learn.dls if trust_pickle else split  # test_dl: the validation pipeline, normalisation included
        train_dl = source.test_dl(train_items, with_labels=True, bs=bs, num_workers=0)
        train = analyse(learn, train_dl, train_items, classes, progress=progress)
        written["losses"] = write_losses(run_dir, build_split.root, {"train": train, "valid": analysis}, classes)
    from trainer.runs.report import write_report

    write_report(run_dir)  # the page shows the new interpretation
    return written


def write_losses(run_dir: Path, root: Path, parts: dict[str, Analysis], classes: list[str]) -> int:
    """losses.csv: one row per image of each split (`parts`: split name -> its analysis), the path as split.csv
    writes it (under `root`), the label and prediction as the model's vocab (`classes`) names them, highest loss
    first (a NaN loss first of all). How many rows it holds."""
    import math

    from trainer.runs.split import relative

    rows = []
    for name, analysis in parts.items():
        if isinstance(analysis, MultiAnalysis):  # each image's labels and predicted labels, space-separated
            targets, predicted = analysis.targets.long(), analysis.predicted
            for i, (item, loss) in enumerate(zip(analysis.items, analysis.losses.tolist())):
                rows.append([name, relative(Path(item), root), analysis.names(targets[i]), analysis.names(predicted[i]),
                             round(analysis.mean_probability(i, predicted[i]), 6), round(loss, 6) + 0.0])
            continue
        predicted = analysis.predicted.tolist()
        chosen = analysis.probs.gather(1, analysis.predicted[:, None]).squeeze(1).tolist()
        for item, target, guess, p, loss in zip(analysis.items, analysis.targets.tolist(), predicted, chosen,
                                                analysis.losses.tolist()):
            rows.append([name, relative(Path(item), root), classes[target], classes[guess], round(p, 6),
                         round(loss, 6) + 0.0])  # + 0.0: no -0.0
    rows.sort(key=lambda r: (-r[5] if not math.isnan(r[5]) else -math.inf, r[0], r[1]))
    write_csv(run_dir / rundir.LOSSES, rundir.LOSSES_HEADER, rows)
    return len(rows)


def run_data(run_dir: Path, data: str | None):
    """(recipe, options, data path, split(bs, device)): the run's own train/valid split, rebuilt from its
    config.json when called (same seed, same unreadable files left out; `split.root` is then the dataset
    folder its items are under). The data's presence is checked now, before anything costly is loaded."""
    from dataclasses import replace

    from trainer.config import FitConfig
    from trainer.data.loaders import build_dls
    from trainer.data.source import locate
    from trainer.errors import BadInput
    from trainer.data.images import readable_or_refuse, scan
    from trainer.recipes import get_recipe
    from trainer.runs.rundir import read_config
    from trainer.runs.split import check_split

    config = read_config(run_dir)  # validated: these fields are there, of the right types
    cfg = FitConfig(**config["options"])
    recipe = get_recipe(config["recipe"]["name"]).configured(cfg)  # --labels, --label-re: their layout
    data_path = Path(data or config["data"]["path"])
    if not data_path.exists():
        raise BadInput(f"the run's data {data_path} is gone; pass --data where it is now")

    def split(bs: int, torch_device, progress=None):
        root = locate(recipe, str(data_path))
        total, bad = scan(root, progress=progress)
        readable_or_refuse(total, bad, str(root), "check the files or pass --data with the run's dataset")
        dls = build_dls(recipe, root, replace(cfg, workers=0, bs=bs), torch_device, skip={path for path, _ in bad})
        check_split(run_dir, config, dls, root)  # the run's own validation set, or a clear refusal
        split.root = root
        return dls

    return recipe, cfg, data_path, split


