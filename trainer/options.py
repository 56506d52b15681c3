"""One definition of every training option: name, type, range, default and help.

The CLI builds `trainer fit`/`trainer lr-find` from these (typer options, --help panels and ranges),
FitConfig checks values with them (so the Python API and the CLI refuse a value with the same line),
the listing and the report write flags with `as_flag`, and docs/cli.md's table is checked against them.
No heavy imports: `trainer --help` reads this.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trainer.errors import BadInput, did_you_mean

DATA, MODEL, TRAINING, AUGMENTATION, HARDWARE, OUTPUTS = ("Data", "Model", "Training", "Augmentation", "Hardware",
                                                         "Outputs")  # --help panels

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "lamb", "ranger")
INITS = ("default", "kaiming", "xavier")
DEVICES = ("auto", "cpu", "cuda", "mps")  # plus cuda:N
TOP_K = 9  # highest-loss validation images the interpretation shows
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
# Upper bounds of the other integer options, so a huge value is a usage error, not an OverflowError from numpy,
# itertools (islice past sys.maxsize) or a read() of that many bytes; each far above any real use.
BS_MAX = 65_536  # images per batch, training or inference
SIZE_MAX = 8_192  # pixels per side
EPOCHS_MAX = 100_000
TOP_K_MAX = 1_000  # the top-losses plot and predict's classes per image
WORKERS_MAX = 256  # DataLoader or server worker processes
NUM_IT_MAX = 100_000  # lr-find's mini-batches
MAX_BYTES_MAX = 2**31  # serve --max-bytes: one image file
MAX_PIXELS_MAX = 2**34  # serve --max-pixels: one image
# fastai's own default weight decay of each optimiser (the `wd` default of Adam, SGD, ...): resolved without
# importing fastai (--print-config imports no torch); tests/test_options.py checks it against fastai's signatures
FASTAI_WD = {"adam": 0.01, "sgd": 0.0, "rmsprop": 0.0, "lamb": 0.0, "ranger": 0.01}
# A run's --name: a folder name on every filesystem, that cannot be mistaken for a run id or `latest`
RUN_NAME = (r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", "letters, digits, '.', '_' or '-' (at most 100), starting with a "
                                               "letter or digit, e.g. resnet50-lr3e-3")
# aug_transforms' parameters that --aug uses unless given: the course's min_scale, fastai's own defaults otherwise
# --mlflow alone (or `mlflow=True` from Python): MLFLOW_TRACKING_URI, else ./mlruns (resolve_mlflow_uri)
MLFLOW_DEFAULT = "default"
AUG_DEFAULTS = {"min_scale": 0.75, "flip_vert": False, "max_rotate": 10.0, "max_lighting": 0.2}


@dataclass(frozen=True)
class Option:
    name: str  # the FitConfig field; the flag is --name-with-dashes
    kind: type  # int, float, str or bool
    help: str
    panel: str
    default: str = ""  # what --help shows when it is not set ("the recipe's", "64")
    low: float | None = None  # range, inclusive unless low_open/high_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    switch: bool = False  # a bool with only the --name form (no --no-name)
    example: str = ""  # a valid value, for the error message's "e.g."
    pattern: tuple[str, str] = ()  # a str's form: (regular expression, what it says in words)
    env: str = ""  # the environment variable the CLI reads when the flag is not given (--help says so)
    bare: str = ""  # a str whose value may be left out: the flag alone means this value (`--mlflow`)
    metavar: str = ""  # what --help shows for the value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> None:
        """Refuse a value outside the definition, in one line naming the flag, what it must be and what was given."""
        if value is None:
            return
        if self.choices:
            if value not in self.choices:
                raise BadInput(f"unknown {self.flag} '{value}'{did_you_mean(str(value), self.choices)}; "
                               f"use one of {', '.join(self.choices)}")
            return
        if self.pattern and (not isinstance(value, str) or not re.fullmatch(self.pattern[0], value)):
            raise BadInput(f"{self.flag} must be {self.pattern[1]}, got '{value}'")
        if self.kind in (int, float) and (self.low is not None or self.high is not None):
            self.check_number(value)

    def check_number(self, value) -> None:
        number = "a whole number" if self.kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or self.kind is int and not isinstance(value, int):
            raise BadInput(f"{self.flag} must be {number}, got '{value}'")
        if not math.isfinite(value) or self.out_of_range(value):
            raise BadInput(f"{self.flag} must be {self.range_text(value)}{self.example_text()}, got {value}")

    def out_of_range(self, value) -> bool:
        low, high = self.low, self.high
        return (low is not None and (value <= low if self.low_open else value < low)) or \
               (high is not None and (value >= high if self.high_open else value > high))

    def range_text(self, value=None) -> str:
        """What the value must be; for closed bounds, the one `value` crossed ("of at least 1")."""
        number = "a whole number" if self.kind is int else "a number"
        if self.low == 0 and self.low_open and self.high is None:
            return "a positive number"
        closed = not self.low_open and not self.high_open
        if closed and self.low is not None and self.high is not None and value is not None and math.isfinite(value):
            return f"{number} of at least {number_text(self.low)}" if value < self.low else \
                f"{number} of at most {number_text(self.high)}"
        if self.low is not None and self.high is not None:
            if self.low_open and self.high_open:
                return f"between {number_text(self.low)} and {number_text(self.high)}"
            if not self.low_open and self.high_open:
                return f"at least {number_text(self.low)} and below {number_text(self.high)}"
            if self.low_open and not self.high_open:
                return f"above {number_text(self.low)} and at most {number_text(self.high)}"
            return f"{number} from {number_text(self.low)} to {number_text(self.high)}"
        if self.low is not None:
            return "0 or a positive number" if self.kind is float and self.low == 0 else f"{number} of at least {number_text(self.low)}"
        return f"{number} of at most {number_text(self.high)}"

    def example_text(self) -> str:
        return f" (e.g. {self.example})" if self.example else ""

    def typer_range(self) -> dict:
        """min/max for typer (closed bounds only: open ones are checked by `check`)."""
        bounds = {}
        if self.kind is int and self.low is not None and not self.low_open:
            bounds["min"] = int(self.low)
        if self.kind is int and self.high is not None and not self.high_open:
            bounds["max"] = int(self.high)
        return bounds


def number_text(x: float) -> str:
    """A bound as people write it: 1, not 1.0."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _options(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


OPTIONS = _options(
    # Data
    Option("data", str, "Dataset folder, .tgz/.tar/.zip archive, or an http(s):// URL of one (downloaded once into "
                        "FASTAI_HOME/archive)", DATA,
           "the recipe's folder under the data root, $TRAINER_DATA or ./datasets, then FASTAI_HOME, then download"),
    Option("data_sha256", str, "SHA-256 the --data URL's download (or --data archive) must have; a mismatch is "
                               "refused and the download removed", DATA,
           pattern=(r"[0-9a-fA-F]{64}", "64 hexadecimal digits (what sha256sum prints)")),
    Option("size", int, "Image size for recipes that resize (pets, pets_breeds, folder)", DATA, "224", low=1, high=SIZE_MAX),
    Option("valid_pct", float, "Random validation fraction instead of the folders' split (cifar10, folder)", DATA,
           low=0, high=1, low_open=True, high_open=True, example="0.2"),
    Option("labels", str, "A CSV of file names and labels, paths relative to --data (folder recipe): --fn-col, "
                          "--label-col and an optional validation column, like fastai's from_df", DATA),
    Option("fn_col", str, "--labels: the column of file names (a header name or a 0-based index)", DATA,
           "the first column"),
    Option("label_col", str, "--labels: the column of labels (a header name or a 0-based index)", DATA,
           "the second column"),
    Option("valid_col", str, "--labels: a true/false column marking the validation images", DATA,
           "is_valid when the CSV has it, else a random split"),
    Option("label_delim", str, "--labels: the separator between an image's labels: a multi-label model "
                               "(e.g. ' ')", DATA),
    Option("label_re", str, "Label each image by the first group of this regular expression's match on its file "
                            "name, like fastai's from_name_re (folder recipe)", DATA),
    Option("cache", bool, "Decode small images (mnist, cifar10, digits) once into a tensor cache; shrink photos "
                          "(pets, folder) once to the resize size", DATA, "on"),
    # Model
    Option("arch", str, "Architecture: resnet34 (default); torchvision's resnet, resnext, wide_resnet, densenet, "
                        "vgg*_bn, squeezenet, alexnet, efficientnet, mobilenet_v2/v3, convnext, regnet; or a timm "
                        "model name, exactly (timm installed)", MODEL),
    Option("pretrained", bool, "Start from ImageNet weights", MODEL, "yes, except digits"),
    Option("weights", str, "Pretrained weights from a file, no download: a state dict (.pth or .safetensors) saved "
                           "from --arch (torchvision or timm)", MODEL),
    Option("dropout", float, "Dropout probability of the head's last layer", MODEL, "0.5", low=0, high=1,
           high_open=True, example="0.5"),
    Option("init", str, "Initialise the layers trained from scratch: default (torchvision's), kaiming (He) or "
                        "xavier (Glorot)", MODEL, "default", choices=INITS),
    # Training
    Option("epochs", int, "Epochs to train", TRAINING, "the recipe's", low=1, high=EPOCHS_MAX),
    Option("lr", float, "Base learning rate: a number, 'auto' (lr_find's valley) or 'review' (lr_find, then wait for "
                        "a person's choice)", TRAINING, "the recipe's", low=0, low_open=True),
    Option("bs", int, "Batch size", TRAINING, "64", low=1, high=BS_MAX),
    Option("opt", str, "Optimiser, fastai's (momentum follows the one-cycle schedule where it applies)", TRAINING,
           "adam", choices=OPTIMIZERS),
    Option("wd", float, "Weight decay", TRAINING, "the optimiser's fastai default, 0.01 for adam and ranger, 0 for "
                                                  "sgd, rmsprop, lamb", low=0, example="0.01"),
    Option("early_stop", int, "Stop when the recipe's main metric has not improved for this many epochs; keeps the "
                              "best epoch's weights", TRAINING, low=1, high=EPOCHS_MAX),
    Option("save_best", bool, "Export the best epoch's weights (by the main metric) instead of the last epoch's",
           TRAINING, switch=True),
    Option("threshold", float, "Multi-label: a label is predicted when its probability is above this (metrics, "
                               "interpretation, predict, serve)", TRAINING, "0.5", low=0, high=1, low_open=True,
           high_open=True, example="0.5"),
    Option("seed", int, "Random seed for the split, initial weights and shuffling", TRAINING, "42", low=0,
           high=SEED_MAX),
    # Augmentation: fastai's presizing + aug_transforms (training batches only), MixUp, label smoothing
    Option("aug", bool, "Augment training batches with fastai's aug_transforms (flips, rotation, zoom, warp, "
                        "lighting; folder and pets_breeds: a random crop of the presized image); validation and "
                        "inference never are", AUGMENTATION,
           "on for folder and pets_breeds, off for the course's other recipes"),
    Option("min_scale", float, "Smallest fraction of the image the random crop keeps (folder, pets_breeds); "
                               "implies --aug", AUGMENTATION, str(AUG_DEFAULTS["min_scale"]), low=0, high=1, low_open=True,
           example="0.75"),
    Option("flip_vert", bool, "Also flip vertically and rotate by 90 degrees, for images with no up (microscopy, "
                              "satellite); implies --aug", AUGMENTATION, switch=True),
    Option("max_rotate", float, "Largest random rotation, in degrees; implies --aug", AUGMENTATION,
           number_text(AUG_DEFAULTS["max_rotate"]), low=0, high=180, example="10"),
    Option("max_lighting", float, "Largest random change of brightness and contrast; implies --aug", AUGMENTATION,
           str(AUG_DEFAULTS["max_lighting"]), low=0, high=1, high_open=True, example="0.2"),
    Option("mixup", float, "Train on MixUp blends of image pairs (fastai's MixUp), with this Beta(alpha, alpha)",
           AUGMENTATION, low=0, low_open=True, example="0.4"),
    Option("label_smoothing", float, "Label smoothing epsilon (fastai's LabelSmoothingCrossEntropyFlat)", AUGMENTATION,
           low=0, high=1, low_open=True, high_open=True, example="0.1"),
    # Hardware
    Option("device", str, "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", HARDWARE, "auto",
           env="TRAINER_DEVICE"),
    Option("precision", str, "auto: mixed on CUDA, fp32 on CPU", HARDWARE, "auto", choices=PRECISIONS),
    Option("workers", int, "DataLoader worker processes", HARDWARE, "0 on CPU, up to 8 on GPU", low=0,
           high=WORKERS_MAX),
    # Outputs
    Option("name", str, "Name the run: its directory is OUT/<recipe>/NAME instead of its start time, and every "
                        "command that takes a run takes the name; a name already taken is refused", OUTPUTS,
           "the start time, e.g. 20261201-143000", pattern=RUN_NAME),
    Option("interpret", bool, "Write the confusion matrix and top-loss plots at the end", OUTPUTS, "interpret"),
    Option("top_k", int, "How many of the highest-loss validation images to show", OUTPUTS, str(TOP_K), low=1,
           high=TOP_K_MAX),
    Option("tensorboard", bool, "Log losses, metrics and learning rate per step to RUN_DIR/tensorboard/ (needs the "
                                "tensorboard package)", OUTPUTS, "no"),
    Option("activation_stats", bool, "Record per-layer activation statistics: activations.png/.json", OUTPUTS,
           switch=True),
    Option("mlflow", str, "Log the options, every epoch's metrics, the summary and the model, plots and report to "
                          "this MLflow tracking URI (an http(s):// server, a folder, sqlite:///FILE); --mlflow alone: "
                          "the default (needs the mlflow package)", OUTPUTS, "MLFLOW_TRACKING_URI, else ./mlruns",
           bare=MLFLOW_DEFAULT, metavar="[URI]", example="http://127.0.0.1:5000"),
)

# What lr-find takes of them (the data and model options; not the schedule or outputs)
LR_FIND_OPTIONS = ("data", "data_sha256", "labels", "fn_col", "label_col", "valid_col", "label_delim", "label_re",
                   "size", "valid_pct", "cache", "arch", "pretrained", "weights", "bs", "seed", "device", "precision",
                   "workers", "name")


# --data-sha256 alone: there is no archive to check (the recipes' own downloads are fastai's, checked by it)
NO_ARCHIVE_TO_CHECK = "--data-sha256 checks the --data archive: give --data URL (or an archive file) with it"


def check_device(spec: str) -> None:
    """A device name every command understands: auto, cpu, cuda, cuda:N, mps."""
    if not isinstance(spec, str) or spec not in DEVICES and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise BadInput(f"unknown --device '{spec}'{did_you_mean(str(spec), DEVICES)}; "
                       f"use one of auto, cpu, cuda, cuda:N, mps")


LR_WORDS = ("auto", "review")  # --lr's words: lr_find's valley; lr_find, then a person's choice (the lr_find gate)
LR_SUGGESTIONS = ("minimum", "steep", "valley", "slide")  # lr_find's four suggestions, by fastai's names


def parse_lr(lr):
    """--lr as given: a number, 'auto' or 'review'."""
    if lr is None or lr in LR_WORDS or isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return lr
    try:
        return float(lr)
    except (TypeError, ValueError):
        raise BadInput(lr_refusal(lr)) from None


def lr_refusal(lr) -> str:
    return f"--lr must be a number (e.g. 1e-3), 'auto' or 'review', got '{lr}'"


def check_lr_processes(lr, processes: int) -> None:
    """--lr auto and --lr review run lr_find in one process: refused under --nproc N > 1 or torchrun."""
    if processes > 1 and lr in LR_WORDS:
        wait = " and waits for a person's choice" if lr == "review" else ""
        raise BadInput(f"--lr {lr} runs lr_find{wait} in one process: train without --nproc or torchrun, or run "
                       f"`trainer lr-find` first, then pass --lr")


# lr-find given a learning rate (`trainer lr-find --lr`, the API, a service job): it finds one, it trains nothing
LR_FIND_TAKES_NO_LR = ("lr-find finds a learning rate and trains nothing: it takes no --lr; to choose the rate from "
                       "lr_find's curve before training, use `trainer fit RECIPE --lr review`")


def chosen_lr(value, suggestions: dict) -> tuple[float, str | None]:
    """The lr_find gate's answer (a number, or the name of one of lr_find's suggestions) as (rate, the
    suggestion's name or None for a typed number), checked by the lr option's own definition."""
    if isinstance(value, str) and value.strip().lower() in LR_SUGGESTIONS:
        name = value.strip().lower()
        if name not in suggestions:
            raise BadInput(f"lr_find gave no {name} suggestion (its curve was too short for it); choose one of "
                           f"{', '.join(suggestions)} or give a number")
        return float(suggestions[name]), name
    given = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = "nothing" if given is None else f"'{given}'" if isinstance(given, str) else repr(given)
        raise BadInput(f"the learning rate must be a number (e.g. 1e-3) or one of lr_find's suggestions "
                       f"({', '.join(LR_SUGGESTIONS)}), got {shown}")
    OPTIONS["lr"].check(value)
    return float(value), None


def check_mlflow(value) -> None:
    """--mlflow's value before it is resolved: a tracking URI or a folder, "default" or True (the default), False
    or None (none)."""
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"--mlflow must be a tracking URI (e.g. http://127.0.0.1:5000) or a folder, or nothing for "
                       f"the default (MLFLOW_TRACKING_URI, else ./mlruns); got '{value}'")


def resolve_mlflow_uri(value, environ=None) -> str | None:
    """--mlflow as the tracking URI config.json records: None when off; the default is MLFLOW_TRACKING_URI, else
    ./mlruns; a folder (no scheme) becomes an absolute file:// URI, so a resumed run and the service's jobs
    log to the same store whatever their working directory."""
    import os
    from pathlib import Path

    if value is None or value is False:
        return None
    if value is True or value == MLFLOW_DEFAULT:
        value = (os.environ if environ is None else environ).get("MLFLOW_TRACKING_URI") or "./mlruns"
    value = value.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", value):  # a scheme (not a Windows drive letter): as given
        if value.startswith("file:") and not value.startswith("file:/"):  # file:relative/path
            return Path(value[5:]).expanduser().resolve().as_uri()
        return value
    return Path(value).expanduser().resolve().as_uri()


def as_flag(name: str, value) -> str:
    """An option as the command line writes it: `--top-k 5`, `--no-interpret`, `--tensorboard`."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def as_args(options: dict) -> list[str]:
    """The command-line words for the options set (None: not set), in the definitions' order."""
    words = []
    for name, option in OPTIONS.items():
        value = options.get(name)
        if value is None or option.switch and value is False:
            continue
        words.extend(as_flag(name, value).split(" ", 1))
    return words
