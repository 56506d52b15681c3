"""`trainer interpret`, `trainer evaluate`, `trainer predict`, `trainer report`: looking at a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from trainer.cli.app import app, console
from trainer.cli.options import RUNS, AsJson, Device, InferenceBs, RunsRoot, TrustPickle, Tta
from trainer.cli.train import print_confused
from trainer.options import TOP_K, TOP_K_MAX
from trainer.progress import stderr_display


WITH_TTA = {True: " (with TTA)", False: ""}


@app.command()
def interpret(
    target: Annotated[str, typer.Argument(help="A recipe (its latest trained run under --out) or a run directory.",
                                          show_default=False)],
    top_k: Annotated[int, typer.Option(min=1, max=TOP_K_MAX,
                                       help="How many of the highest-loss validation images to show.")] = TOP_K,
    data: Annotated[Optional[str], typer.Option(help="Where the run's data is now, if it moved.")] = None,
    losses: Annotated[bool, typer.Option("--losses", help="Also write losses.csv: every training and validation "
                                                          "image's loss, highest first (to find mislabelled "
                                                          "images).")] = False,
    tta: Tta = False, bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS,
    trust_pickle: TrustPickle = False,
):
    """Where the model fails: confusion matrices, top losses, most confused pairs, per-class report."""
    from trainer.inspection.interpret import interpret_run
    from trainer.runs.store import resolve_run

    run_dir = resolve_run(target, out)
    report = interpret_run(run_dir, top_k=top_k, data=data, bs=bs, device=device, trust_pickle=trust_pickle,
                           losses=losses, tta=tta, progress=stderr_display().publish)
    also = f", losses.csv ({report['losses']} images)" if losses else ""
    if report.get("multi_label"):
        console().print(f"accuracy_multi {report['accuracy']:.4f}, macro F1 {report['f1_macro']:.4f} on "
                        f"{report['n']} validation images{WITH_TTA[tta]}")
        console().print(f"wrote confusion_per_label.png/.csv, top_losses.png/.csv, per_class.csv/.json{also}")
        print(run_dir)
        return
    console().print(f"accuracy {report['accuracy']:.4f} on {report['n']} validation images{WITH_TTA[tta]}")
    print_confused(report["most_confused"])
    console().print("wrote confusion_matrix.png/.csv, confusion_matrix_normalized.png, top_losses.png/.csv, "
                    f"most_confused.csv{'/.png' if (run_dir / 'most_confused.png').is_file() else ''}, "
                    f"per_class.csv/.json{also}")
    print(run_dir)


@app.command()
def evaluate(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe name for its newest trained run.",
                                          show_default=False)],
    data: Annotated[str, typer.Option(help="Labelled test images: <class>/ folders, or a folder with a test/ of them.",
                                      show_default=False)],
    labels: Annotated[Optional[str], typer.Option(help="A CSV of the test images (paths relative to --data) and "
                                                       "their labels, instead of class folders; a multi-label "
                                                       "model's labels separated as in training.",
                                                  show_default=False)] = None,
    fn_col: Annotated[Optional[str], typer.Option(help="--labels: the file-name column (name or 0-based index).",
                                                  show_default=False)] = None,
    label_col: Annotated[Optional[str], typer.Option(help="--labels: the label column (name or 0-based index).",
                                                     show_default=False)] = None,
    tta: Tta = False, bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS,
):
    """A trained run's metrics on a separate labelled test set: test_metrics.json and its confusion matrix."""
    from trainer.inspection.evaluate import evaluate_run
    from trainer.runs.store import resolve_run

    run_dir = resolve_run(target, out)
    result = evaluate_run(run_dir, data, bs=bs, device=device, labels=labels, fn_col=fn_col, label_col=label_col,
                          tta=tta, progress=stderr_display().publish)
    if result.get("multi_label"):
        console().print(f"test set {result['labels']}: accuracy_multi {result['accuracy_multi']:.4f}, macro F1 "
                        f"{result['f1_macro']:.4f}, loss {result['loss']:.4f} on {result['n']} images"
                        f"{WITH_TTA[tta]}", markup=False)
        console().print("wrote test_metrics.json, test_confusion_per_label.png/.csv")
        print(run_dir)
        return
    console().print(f"test set {result['data']}: accuracy {result['accuracy']:.4f}, error_rate "
                    f"{result['error_rate']:.4f}, loss {result['loss']:.4f} on {result['n']} images{WITH_TTA[tta]}",
                    markup=False)
    print_confused(result["most_confused"][:5])
    console().print("wrote test_metrics.json, test_confusion_matrix.png/.csv")
    print(run_dir)


@app.command()
def predict(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run.",
                                          show_default=False)],
    images: Annotated[List[Path], typer.Argument(help="Image files and/or folders (every image in a folder).",
                                                 show_default=False)],
    top_k: Annotated[int, typer.Option(min=1, max=TOP_K_MAX, help="Classes to show per image, most probable first.")] = 1,
    tta: Tta = False, as_json: AsJson = False, bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS,
    trust_pickle: TrustPickle = False,
):
    """Predict the class of images with a trained run's model."""
    from trainer.runs.store import resolve_run
    from trainer.serving.inference import predict_images

    results = predict_images(resolve_run(target, out), images, top_k=top_k, bs=bs, device=device,
                             trust_pickle=trust_pickle, tta=tta, progress=stderr_display().publish)
    if as_json:
        import json

        print(json.dumps(results, indent=2))
    else:
        print_predictions(results, top_k)


def print_predictions(results: list[dict], top_k: int) -> None:
    from rich.table import Table

    table = Table("image", "prediction", "probability", *(["others"] if top_k > 1 else []))
    for row in results:
        if "unreadable" in row:
            table.add_row(row["path"], "unreadable", "-", *([row["unreadable"]] if top_k > 1 else []))
            continue
        if not row["predictions"]:  # multi-label: no label above the threshold
            table.add_row(row["path"], "(no label above the threshold)", "-", *([""] if top_k > 1 else []))
            continue
        if row.get("threshold") is not None:  # multi-label: every label above the threshold, each with its probability
            shown = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in row["predictions"])
            table.add_row(row["path"], " ".join(p["label"] for p in row["predictions"]), shown,
                          *([""] if top_k > 1 else []))
            continue
        best, *rest = row["predictions"]
        others = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in rest)
        table.add_row(row["path"], best["label"], f"{best['probability']:.3f}", *([others] if top_k > 1 else []))
    out = console()
    if not out.is_terminal:
        out.width = 160
    out.print(table)


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="A run directory, run id or recipe name (its newest run).",
                                          show_default=False)],
    out: RunsRoot = RUNS,
):
    """Rebuild a run's report.html (one self-contained page: config, metrics, plots, interpretation)."""
    from trainer.runs.report import rebuild_report
    from trainer.runs.store import resolve_run

    print(rebuild_report(resolve_run(target, out, need_model=False)))
