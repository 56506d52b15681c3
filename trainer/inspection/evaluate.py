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


def evaluate_run(run_dir: Path, data: str, bs: int = 64, device: str = "auto", tta: bool = False) -> dict:
    """Metrics of a trained run on a separate labelled test set (class folders, or a test/ subfolder of
    them), written into the run as test_metrics.json and test_confusion_matrix.png/.csv. `tta`: of fastai's
    test-time-augmented predictions (test_metrics.json records it)."""
    from trainer.errors import BadInput
    from trainer.data.images import image_files, readable_or_refuse, scan
    from trainer.device import resolve_device
    from trainer.model.learner import class_names, inference_learner, load_weights

    root = Path(data)
    if not root.is_dir():
        raise BadInput(f"--data {data}: no such folder; give a folder of <class>/ subfolders of labelled test images")
    test = root / "test" if (root / "test").is_dir() else root
    total, bad = scan(test)
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
    analysis = analyse(inference_learner(dls, model), dls.valid, items, class_names(run_dir, meta["classes"]), tta=tta)
    classes, cm = analysis.classes, analysis.confusion()
    title = f"{meta['recipe']} · run {run_dir.name} · test set {test}{' · with TTA' if tta else ''}"
    write_confusion(cm, classes, title, run_dir, rundir.TEST_CONFUSION)
    result = {"data": str(test.resolve()), "n": len(items), "n_skipped": len(bad), "tta": tta,
              "accuracy": round(analysis.accuracy, 6), "error_rate": round(1 - analysis.accuracy, 6),
              "loss": round(float(analysis.losses.mean()), 6), "per_class": analysis.per_class(),
              "most_confused": analysis.most_confused()[:10]}
    write_json(run_dir / rundir.TEST_METRICS, result)
    from trainer.runs.report import write_report

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
