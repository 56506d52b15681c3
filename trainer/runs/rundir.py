"""The schema of a run directory, runs/<recipe>/<id>/: every file a run holds, who writes it, how it is read.

Every module names a run's files through the constants below, and reads the shared ones through the
readers here, so a file is renamed or reshaped in one place. No torch or fastai here (listing stays
instant). Written atomically by trainer.runs.store (temporary file, then rename).

  file                          written by                      holds
  config.json                   fit / lr-find, at the start     every option asked and resolved, data, device
  split.csv                     fit, at the start               every image: split, path under the data root, label
  skipped_images.txt            fit, at the start               the unreadable images left out, and why
  lr_find.json, lr_find.png     lr-find, fit --lr auto          the curve and the suggestions
  batch.png                     fit                             a training batch as the model sees it
  metrics.csv                   fit, after every epoch          one row per epoch
  last.pth, checkpoint.json     fit, after every epoch          the whole state for --resume; a mirror for people
  best.pth                      fit, when the metric improves   the best epoch's weights
  model.safetensors, model.json fit, at the end                 the weights and what inference needs (no pickle)
  model.pkl                     fit, at the end                 fastai's Learner.export, for fastai users
  history.png, results.png      fit, at the end                 loss/metric curves; validation predictions
  activations.png/.json         fit --activation-stats          per-layer activation statistics
  summary.json                  fit, last                       final metrics, timings, baseline verdict: the run is done
  confusion_matrix*.png/.csv,   fit, interpret                  the validation set's interpretation
  most_confused.*, top_losses.*,
  per_class.csv/.json
  test_metrics.json,            evaluate                        the same on a separate test set
  test_confusion_matrix.png/.csv
  report.html                   fit, lr-find, interpret, ...    one self-contained page of all the above
  error.log                     fit, when training failed       the traceback
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

CONFIG = "config.json"
SPLIT = "split.csv"
SKIPPED = "skipped_images.txt"
LR_FIND_JSON, LR_FIND_PNG = "lr_find.json", "lr_find.png"
BATCH = "batch.png"
METRICS = "metrics.csv"
LAST, CHECKPOINT, BEST = "last.pth", "checkpoint.json", "best.pth"
WEIGHTS, MODEL_META, MODEL_PICKLE = "model.safetensors", "model.json", "model.pkl"
HISTORY, RESULTS = "history.png", "results.png"
ACTIVATIONS_PNG, ACTIVATIONS_JSON = "activations.png", "activations.json"
SUMMARY = "summary.json"
CONFUSION, CONFUSION_NORMALIZED = "confusion_matrix", "confusion_matrix_normalized"  # .png and .csv
MOST_CONFUSED, TOP_LOSSES, PER_CLASS = "most_confused", "top_losses", "per_class"  # .png/.csv, .png/.csv, .csv/.json
TEST_METRICS, TEST_CONFUSION = "test_metrics.json", "test_confusion_matrix"  # and .png/.csv
REPORT = "report.html"
ERROR_LOG = "error.log"
TENSORBOARD = "tensorboard"  # a folder, with --tensorboard


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """(content, problem): problem is None, 'missing' or 'unreadable' (for listings that must never stop)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError):
        return None, "unreadable"
    return (value, None) if isinstance(value, dict) else (None, "unreadable")


def read_config(run_dir: Path) -> dict:
    """config.json, or a one-line BadInput when the run does not have a readable one."""
    from trainer.errors import BadInput

    config, problem = read_json(run_dir / CONFIG)
    if config is None:
        raise BadInput(f"{run_dir}/{CONFIG} is {problem}; the run is incomplete: train again with `trainer fit`")
    return config


def read_metrics(run_dir: Path) -> tuple[list[str], list[list]]:
    """metrics.csv as (header, rows), each row [epoch, phase, *values as floats]; ([], []) when there is none.
    ValueError when it is not a metrics file."""
    try:
        with open(run_dir / METRICS, newline="") as f:
            header, *rows = list(csv.reader(f))
    except (FileNotFoundError, ValueError):  # no file, or an empty one
        return [], []
    return header, [[int(r[0]), r[1], *[float(v) for v in r[2:]]] for r in rows]


def read_metrics_or_empty(run_dir: Path) -> tuple[list[str], list[list]]:
    """read_metrics, or ([], []) when metrics.csv is unreadable or damaged: listings and reports never stop."""
    try:
        return read_metrics(run_dir)
    except (OSError, ValueError, IndexError):
        return [], []


def last_metrics(run_dir: Path) -> dict:
    """The last epoch's values (for a run that stopped before summary.json); {} when there are none."""
    header, rows = read_metrics_or_empty(run_dir)
    return {k: v for k, v in zip(header, rows[-1]) if k not in ("epoch", "phase", "seconds")} if rows else {}


def has_model(run_dir: Path) -> bool:
    return (run_dir / WEIGHTS).is_file() or (run_dir / MODEL_PICKLE).is_file()
