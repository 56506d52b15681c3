"""`trainer evaluate`: a trained run's metrics on a separate, labelled test set.

The validation set chose the epochs and the learning rate, so its error is optimistic; a test
set the run never saw gives the honest figure. Written into the run directory beside the rest.
"""

from __future__ import annotations

from pathlib import Path

from trainer.runs import rundir
from trainer.serving.inference import inference_dls
from trainer.inspection.interpret import analyse, write_confusion
from trainer.files import write_json


def evaluate_run(run_dir: Path, data: str, bs: int = 64, device: str = "auto", labels: str | None = None,
                 fn_col: str | None = None, label_col: str | None = None, tta: bool = False, progress=None) -> dict:
    """Metrics of a trained run on a separate labelled test set (class folders, or a test/ subfolder of
    them), written into the run as test_metrics.json and test_confusion_matrix.png/.csv. `labels`: a CSV of
    the test images (paths relative to `data`) and their labels instead; a multi-label model's test set is one
    (its per-label matrices go to test_confusion_per_label.png/.csv). `tta`: of fastai's test-time-augmented
    predictions (test_metrics.json records it). `progress`: a publish callable that hears the "scan" and
    "predict" steps (trainer.progress); None: nothing is shown."""
    from trainer.errors import BadInput
    from trainer.data.images import image_files, readable_or_refuse, scan
    from trainer.device import resolve_device
    from trainer.model.learner import class_names, inference_learner, load_weights

    if labels is not None:
        return evaluate_csv(run_dir, Path(data), labels, fn_col, label_col, bs, device, tta, progress)
    if fn_col is not None or label_col is not None:
        raise BadInput("--fn-col and --label-col read the --labels CSV: pass --labels FILE.csv too, or drop them")
    if rundir.read_model_meta(run_dir).get("multi_label"):
        raise BadInput("this model is multi-label: give its test images' labels in a CSV, e.g. `trainer evaluate "
                       "RUN --data DIR --labels test.csv` (file names relative to DIR, labels separated as in "
                       "training)")
    root = Path(data)
    if not root.is_dir():
        raise BadInput(f"--data {data}: no such folder; give a folder of <class>/ subfolders of labelled test images")
    test = root / "test" if (root / "test").is_dir() else root
    total, bad = scan(test, progress=progress)
    if not total:
        raise BadInput(f"{test} holds no images; give a folder of <class>/ subfolders of images")
    readable_or_refuse(total, bad, str(test), "give a folder of <class>/ subfolders of images that open")
    skip = {path for path, _ in bad}
    items = [f for f in image_files(test) if f not in skip]
    refuse_training_images(run_dir, test, items)
    torch_device = resolve_device(device)
    model, meta = load_weights(run_dir, torch_device)
    unknown = sorted({f.parent.name for f in items} - set(meta["classes"]))
    if unknown:
        raise BadInput(f"{test}: folder(s) {', '.join(unknown[:5])} are not classes of this model "
                       f"({', '.join(meta['classes'][:10])}); each test image must sit in its class's folder")
    dls = inference_dls(meta, items, bs, torch_device, labelled=True)
    analysis = analyse(inference_learner(dls, model, meta), dls.valid, items, class_names(run_dir, meta["classes"]),
                       tta=tta, progress=progress)
    title = f"{meta['recipe']} · run {run_dir.name} · test set {test}{' · with TTA' if tta else ''}"
    return write_test_result(run_dir, analysis, title, {"data": str(test.resolve()), "n": len(items),
                                                        "n_skipped": len(bad), "tta": tta})


def evaluate_csv(run_dir: Path, root: Path, labels: str, fn_col, label_col, bs: int, device: str,
                 tta: bool = False, progress=None) -> dict:
    """evaluate on a --labels CSV: each row checked as fit checks its own (labels.read_labels), each label one
    of the model's classes."""
    from types import SimpleNamespace

    from trainer.data.images import readable_or_refuse, scan
    from trainer.data.labels import read_labels
    from trainer.device import resolve_device
    from trainer.errors import BadInput
    from trainer.model.learner import class_names, inference_learner, load_weights

    if not root.is_dir():
        raise BadInput(f"--data {root}: no such folder; give the folder the --labels CSV's file names are under")
    meta = rundir.read_model_meta(run_dir)
    multi = bool(meta.get("multi_label"))
    delim = (rundir.read_config(run_dir).get("options") or {}).get("label_delim") if multi else None
    total, bad = scan(root, progress=progress)
    readable_or_refuse(total, bad, str(root), "give test images that open")
    table = read_labels(root, SimpleNamespace(labels=labels, fn_col=fn_col, label_col=label_col, valid_col=None,
                                              valid_pct=None, label_delim=" " if multi and delim is None else delim),
                        skip={path for path, _ in bad}, split=False)
    for row in table.rows:
        unknown = [label for label in row.labels if label not in meta["classes"]]
        if unknown:
            raise BadInput(f"{table.file} line {row.line}: '{unknown[0]}' is not a class of this model "
                           f"({', '.join(meta['classes'][:10])})")
    items = [row.path for row in table.rows]
    refuse_training_images(run_dir, root, items)
    torch_device = resolve_device(device)
    model, meta = load_weights(run_dir, torch_device)
    targets = {str(row.path): list(row.labels) if multi else row.labels[0] for row in table.rows}
    dls = inference_dls(meta, items, bs, torch_device, labels=targets)
    analysis = analyse(inference_learner(dls, model, meta), dls.valid, items, class_names(run_dir, meta["classes"]),
                       tta=tta, progress=progress)
    title = f"{meta['recipe']} · run {run_dir.name} · test set {table.file.name}{' · with TTA' if tta else ''}"
    return write_test_result(run_dir, analysis, title, {"data": str(root.resolve()), "labels": str(table.file.resolve()),
                                                        "n": len(items), "n_skipped": len(bad), "tta": tta})


def write_test_result(run_dir: Path, analysis, title: str, result: dict) -> dict:
    """A test set's figures (beside `result`: where it is, how many images) into test_metrics.json, its confusion
    matrix (multi-label: one per label), and the report; returns them."""
    from trainer.inspection.interpret import MultiAnalysis, write_label_confusions
    from trainer.runs.report import write_report

    result = {**result, "loss": round(float(analysis.losses.mean()), 6), "per_class": analysis.per_class()}
    if isinstance(analysis, MultiAnalysis):
        write_label_confusions(analysis, run_dir, rundir.TEST_LABEL_CONFUSION, title)
        result.update(multi_label=True, threshold=analysis.threshold, accuracy_multi=round(analysis.accuracy, 6),
                      f1_macro=round(analysis.f1_macro(), 6), most_confused=[])
    else:
        write_confusion(analysis.confusion(), analysis.classes, title, run_dir, rundir.TEST_CONFUSION)
        result.update(accuracy=round(analysis.accuracy, 6), error_rate=round(1 - analysis.accuracy, 6),
                      most_confused=analysis.most_confused()[:10])
    write_json(run_dir / rundir.TEST_METRICS, result)
    write_report(run_dir)
    return result


def refuse_training_images(run_dir: Path, test: Path, items: list[Path]) -> None:
    """A test set that holds images the run trained on would flatter it: refuse it (split.csv says which), by
    content, so a copy of the training images stored at another path is refused too."""
    from trainer.errors import BadInput
    from trainer.runs.rundir import read_config
    from trainer.runs.split import training_images

    data = read_config(run_dir).get("data", {})
    trained = training_images(run_dir, Path(data["path"])) if "path" in data else set()
    seen = same_content(items, trained)
    if seen:
        raise BadInput(f"{test}: {len(seen)} of its {len(items)} images trained this run (e.g. {seen[0]}; see "
                       f"{run_dir / rundir.SPLIT}); evaluate on images the run never saw, such as the dataset's "
                       f"test split")


def same_content(items: list[Path], trained: set[Path]) -> list[Path]:
    """The items whose bytes are those of a training image: sizes first, so only same-sized files are hashed."""
    import hashlib

    def size(path: Path) -> int | None:
        try:
            return path.stat().st_size
        except OSError:  # a training image since removed
            return None

    by_size: dict[int, list[Path]] = {}
    for path in trained:
        if (n := size(path)) is not None:
            by_size.setdefault(n, []).append(path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests[path]

    return [f for f in items if f.resolve() in trained
            or any(digest(f) == digest(t) for t in by_size.get(size(f), []))]
