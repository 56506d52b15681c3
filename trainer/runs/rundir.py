"""The schema of a run directory, runs/<recipe>/<id>/: every file a run holds, who writes it, how it is read.

Every module names a run's files through the constants below, and reads the shared ones through the
readers here, so a file is renamed or reshaped in one place. No torch or fastai here (listing stays
instant). Written atomically by trainer.runs.store (temporary file, then rename).

  file                          written by                      holds
  config.json                   fit / lr-find, at the start     every option asked and resolved, data, device
  split.csv                     fit, at the start               every image: split, path under the data root, label
  skipped_images.txt            fit, at the start               the unreadable images left out, and why
  lr_find.json, lr_find.png     lr-find, fit --lr auto/review   the curve and the suggestions
  lr_choice.json                the service or a person, for    the rate chosen at the lr_find gate: lr, suggestion,
                                fit --lr review                 by, at (fit reads it; config.json's lr_find records it)
  batch.png                     fit                             a training batch as the model sees it
  metrics.csv                   fit, after every epoch          one row per epoch
  last.pth, checkpoint.json     fit, after every epoch          the whole state for --resume; a mirror for people
  best.pth                      fit, when the metric improves   the best epoch's weights
  last.pth.sha256, best.pth.sha256, model.safetensors.sha256
                                with the file it names          its content hash: a damaged file is refused
  model.safetensors, model.json fit, at the end                 the weights and what inference needs (no pickle)
  model.pkl                     fit, at the end                 fastai's Learner.export, for fastai users
  history.png, results.png      fit, at the end                 loss/metric curves; validation predictions
  activations.png/.json         fit --activation-stats          per-layer activation statistics
  summary.json                  fit, last                       final metrics, timings, baseline verdict: the run is done
  confusion_matrix*.png/.csv,   fit, interpret                  the validation set's interpretation
  most_confused.*, top_losses.*,
  per_class.csv/.json
  losses.csv                    interpret --losses              every training and validation image: split, path, label,
                                                                predicted, p_predicted, loss; highest loss first
  test_metrics.json,            evaluate                        the same on a separate test set
  test_confusion_matrix.png/.csv
  report.html                   fit, lr-find, interpret, ...    one self-contained page of all the above
  model.onnx, model.torchscript export                          the model for other runtimes; FILE.json describes it
  error.log                     fit, when training failed       the traceback
  mlflow.json                   fit --mlflow, at the start      the MLflow run it logs to: tracking_uri, experiment_id,
                                                                run_id (--resume continues that run)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

CONFIG = "config.json"
SPLIT = "split.csv"
SKIPPED = "skipped_images.txt"
LR_FIND_JSON, LR_FIND_PNG = "lr_find.json", "lr_find.png"
LR_CHOICE = "lr_choice.json"
BATCH = "batch.png"
METRICS = "metrics.csv"
LAST, CHECKPOINT, BEST = "last.pth", "checkpoint.json", "best.pth"
WEIGHTS, MODEL_META, MODEL_PICKLE = "model.safetensors", "model.json", "model.pkl"
HISTORY, RESULTS = "history.png", "results.png"
ACTIVATIONS_PNG, ACTIVATIONS_JSON = "activations.png", "activations.json"
SUMMARY = "summary.json"
CONFUSION, CONFUSION_NORMALIZED = "confusion_matrix", "confusion_matrix_normalized"  # .png and .csv
MOST_CONFUSED, TOP_LOSSES, PER_CLASS = "most_confused", "top_losses", "per_class"  # .png/.csv, .png/.csv, .csv/.json
LABEL_CONFUSION = "confusion_per_label"  # multi-label: one 2x2 matrix per label, .png (a grid) and .csv
TEST_LABEL_CONFUSION = "test_confusion_per_label"  # the same, on evaluate's test set
LOSSES = "losses.csv"
LOSSES_HEADER = ["split", "path", "label", "predicted", "p_predicted", "loss"]  # path as split.csv writes it
TEST_METRICS, TEST_CONFUSION = "test_metrics.json", "test_confusion_matrix"  # and .png/.csv
REPORT = "report.html"
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.torchscript"}  # trainer export --format; FILE.json beside
ERROR_LOG = "error.log"
TENSORBOARD = "tensorboard"  # a folder, with --tensorboard
MLFLOW = "mlflow.json"  # with --mlflow: the MLflow run (trainer.tracking.mlflow)


# What the service hands out of a run directory (GET /jobs/{id}/files): the report, plots, model and metrics;
# never the checkpoints (last.pth, best.pth: the run's internal state) or anything not in this schema.
PUBLIC = (CONFIG, SPLIT, SKIPPED, LR_FIND_JSON, LR_FIND_PNG, LR_CHOICE, BATCH, METRICS, CHECKPOINT, WEIGHTS,
          MODEL_META, MODEL_PICKLE, HISTORY, RESULTS, ACTIVATIONS_PNG, ACTIVATIONS_JSON, SUMMARY, REPORT, ERROR_LOG,
          MLFLOW, TEST_METRICS, LOSSES, *EXPORTS.values(), *(f"{name}.json" for name in EXPORTS.values()),
          *(f"{stem}.{ext}" for stem in (CONFUSION, CONFUSION_NORMALIZED, MOST_CONFUSED, TOP_LOSSES,
                                                        PER_CLASS, TEST_CONFUSION, LABEL_CONFUSION, TEST_LABEL_CONFUSION) for ext in ("png", "csv", "json")))


def is_public_file(name: str) -> bool:
    return name in PUBLIC


def public_files(run_dir: Path) -> list[str]:
    """The schema's public files that `run_dir` holds, in the schema's order."""
    return [name for name in PUBLIC if (run_dir / name).is_file()]


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """(content, problem): problem is None, 'missing' or 'unreadable' (for listings that must never stop)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError):
        return None, "unreadable"
    return (value, None) if isinstance(value, dict) else (None, "unreadable")


RECOVER = "restore the file from a copy, or train again with `trainer fit`"


def damaged(path: Path, field: str, expected: str, got=None) -> Exception:
    """The one line a damaged run file gives: the file, the field, what was expected, how to recover."""
    from trainer.errors import BadInput

    shown = repr(got)[:60] if not isinstance(got, _Missing) else "nothing"
    return BadInput(f"{path} is damaged: {field} must be {expected}, got {shown}; {RECOVER}")


class _Missing:
    pass


MISSING = _Missing()


def field(obj: dict, path: Path, name: str, kind, expected: str, optional: bool = False):
    """obj[name] (dotted names for nested objects) when it is a `kind`; None when optional and absent."""
    value = obj
    for part in name.split("."):
        value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
    if isinstance(value, _Missing) and optional or optional and value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int to isinstance
        raise damaged(path, name, expected, value)
    return value


def read_object(path: Path, what: str) -> dict:
    from trainer.errors import BadInput

    value, problem = read_json(path)
    if value is None:
        raise BadInput(f"{path} is {problem}" + (" (not a JSON object)" if problem == "unreadable" else "")
                       + f"; {what}")
    return value


def read_config(run_dir: Path) -> dict:
    """config.json, validated: a one-line BadInput naming the field when it is missing, damaged or hand-edited
    wrong. The options are checked against their definitions (FitConfig.check, trainer/options.py)."""
    path = run_dir / CONFIG
    config = read_object(path, f"the run is incomplete or damaged: {RECOVER}")
    recipe = field(config, path, "recipe.name", str, "a recipe name")
    field(config, path, "data.path", str, "the data folder (a string)")
    options = field(config, path, "options", dict, "an object of the run's options")
    asked = field(config, path, "asked", dict, "an object of the options asked", optional=True)
    for name, values in (("options", options), ("asked", asked or {})):
        check_options(path, name, {"recipe": recipe, **values})
    return config


def check_options(path: Path, where: str, values: dict) -> None:
    """Each recorded option against its definition: its type and range, one line naming the option."""
    from trainer.config import FitConfig
    from trainer.errors import BadInput
    from trainer.options import OPTIONS, check_device
    from trainer.recipes import RECIPES

    if values["recipe"] not in RECIPES:
        raise damaged(path, "recipe.name", f"one of {', '.join(RECIPES)}", values["recipe"])
    for name, option in OPTIONS.items():
        value = values.get(name)
        if name == "mlflow":  # asked as a URI, or True from Python (the default): FitConfig.check checks it
            continue
        if value is not None and option.kind in (str, bool) and not isinstance(value, option.kind):
            raise damaged(path, f"{where}.{name}", "a string" if option.kind is str else "true or false", value)
    try:
        config = FitConfig(**values)
    except TypeError as e:
        unknown = sorted(set(values) - set(FitConfig.__dataclass_fields__))
        raise damaged(path, f"{where}.{unknown[0]}" if unknown else where,
                      "a known option" if unknown else "an object of the run's options",
                      values[unknown[0]] if unknown else str(e).split("() ", 1)[-1]) from None
    try:
        config.check()
        check_device(config.device)
    except BadInput as e:
        raise BadInput(f"{path} is damaged: {where}: {e}; {RECOVER}") from None


def now_iso() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_lr_choice(run_dir: Path, lr: float, suggestion: str | None, by: str) -> dict:
    """The lr_find gate's answer, written atomically: {"lr", "suggestion" (its name, or None: a typed number),
    "by", "at"}; fit --lr review, waiting in that run, reads it (read_lr_choice)."""
    from trainer.files import write_json

    choice = {"lr": float(lr), "suggestion": suggestion, "by": by, "at": now_iso()}
    write_json(run_dir / LR_CHOICE, choice)
    return choice


def read_lr_choice(run_dir: Path, suggestions: dict) -> dict | None:
    """lr_choice.json checked against lr_find's `suggestions`: {"lr", "suggestion", "by", "at"}; None while
    there is none. Its "lr" is a number or a suggestion's name (or "suggestion" alone names one); a BadInput
    says what is wrong with it."""
    from trainer.errors import BadInput
    from trainer.options import chosen_lr

    path = run_dir / LR_CHOICE
    value, problem = read_json(path)
    if problem == "missing":
        return None
    if value is None:
        raise BadInput(f"{path} is not a JSON object; write {{\"lr\": 0.001}} (or {{\"lr\": \"valley\"}})")
    named = value.get("suggestion")
    try:
        lr, suggestion = chosen_lr(value.get("lr") if value.get("lr") is not None else named, suggestions)
    except BadInput as e:
        raise BadInput(f"{path}: {e}") from None
    if suggestion is None and isinstance(named, str) and suggestions.get(named) == lr:
        suggestion = named
    by, at = value.get("by"), value.get("at")
    return {"lr": lr, "suggestion": suggestion, "by": by if isinstance(by, str) and by else LR_CHOICE,
            "at": at if isinstance(at, str) and at else now_iso()}


def read_model_meta(run_dir: Path) -> dict:
    """model.json, validated: every field inference reads, of the type and range it must have."""
    from trainer.errors import BadInput
    from trainer.options import AUG_DEFAULTS, OPTIONS
    from trainer.recipes import RECIPES

    path = run_dir / MODEL_META
    meta = read_object(path, f"the run has no readable model description: {RECOVER}")
    if field(meta, path, "recipe", str, "a recipe name") not in RECIPES:
        raise damaged(path, "recipe", f"one of {', '.join(RECIPES)}", meta["recipe"])
    if not field(meta, path, "arch", str, "an architecture name (a string)"):
        raise damaged(path, "arch", "an architecture name (a string)", "")
    classes = field(meta, path, "classes", list, "a list of class names (strings)")
    if not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes):
        raise damaged(path, "classes", "a non-empty list of distinct class names (strings)", classes)
    names = field(meta, path, "display_names", list, "a list of names, one per class", optional=True)
    if names is not None and (len(names) != len(classes) or not all(isinstance(n, str) for n in names)):
        raise damaged(path, "display_names", f"a list of {len(classes)} names (strings), one per class", names)
    for name in ("size", "dropout"):
        try:
            OPTIONS[name].check(meta.get(name))
        except BadInput as e:
            raise BadInput(f"{path} is damaged: {e}; {RECOVER}") from None
    norm = field(meta, path, "normalize", dict, "null or {mean: [3 numbers], std: [3 positive numbers]}",
                 optional=True)
    for key in ("mean", "std") if norm is not None else ():
        values = norm.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (key == "mean" or v > 0)
                for v in values)):
            raise damaged(path, f"normalize.{key}", "a list of 3 numbers" + (" above 0" if key == "std" else ""),
                          values)
    from trainer.recipes import TRANSFORMS

    pipeline = field(meta, path, "pipeline", str, f"one of {', '.join(TRANSFORMS)}", optional=True)
    if pipeline is not None and pipeline not in TRANSFORMS:
        raise damaged(path, "pipeline", f"one of {', '.join(TRANSFORMS)}", pipeline)
    aug = field(meta, path, "augmentation", dict, "null or {min_scale, flip_vert, max_rotate, max_lighting}",
                optional=True)
    for name in AUG_DEFAULTS if aug is not None else ():
        try:
            OPTIONS[name].check(aug.get(name))
        except BadInput as e:
            raise BadInput(f"{path} is damaged: augmentation: {e}; {RECOVER}") from None
    side = meta.get("native_size")  # the training images' own [height, width], for recipes that do not resize
    if side is not None and not (isinstance(side, list) and len(side) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in side)):
        raise damaged(path, "native_size", "null or [height, width] in pixels", side)
    return meta


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


def read_losses(run_dir: Path) -> list[dict] | None:
    """losses.csv as rows {split, path, label, predicted, p_predicted, loss} (numbers as floats), in the file's
    order (highest loss first); None when the run has none. BadInput when it is not a losses file."""
    from trainer.errors import BadInput

    path = run_dir / LOSSES
    try:
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # an empty file raises ValueError when unpacked
        raise BadInput(f"{path} is unreadable ({e}); compute it again with `trainer interpret RUN --losses`") from None
    if header != LOSSES_HEADER or any(len(r) != len(LOSSES_HEADER) for r in rows):
        raise BadInput(f"{path} is damaged (expected the columns {','.join(LOSSES_HEADER)}); compute it again with "
                       f"`trainer interpret RUN --losses`")
    try:
        return [{"split": s, "path": p, "label": label, "predicted": predicted, "p_predicted": float(prob),
                 "loss": float(loss)} for s, p, label, predicted, prob, loss in rows]
    except ValueError:
        raise BadInput(f"{path} is damaged (a p_predicted or loss that is not a number); compute it again with "
                       f"`trainer interpret RUN --losses`") from None


def has_model(run_dir: Path) -> bool:
    return (run_dir / WEIGHTS).is_file() or (run_dir / MODEL_PICKLE).is_file()
