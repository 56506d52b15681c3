"""One resolved configuration, from the command line (or the Python API) to fastai and into config.json.

Options the user did not set stay None until `resolve`, so the recipe's defaults win; then the machine's
choices (device, workers, precision, caches) and, with --lr auto, the rate lr_find found (with --lr review, the
rate a person chose at the lr_find gate, training.gate). A FitConfig is
frozen; config.json records the resolved values. Each value is checked against its definition (options.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from trainer.data.locations import is_url
from trainer.errors import BadInput
from trainer.options import (AUG_DEFAULTS, FASTAI_WD, LR_WORDS, NO_ARCHIVE_TO_CHECK, OPTIONS, TOP_K, as_flag,
                             check_device, check_mlflow, lr_refusal, resolve_mlflow_uri)
from trainer.recipes import Recipe, presized
from trainer.runs.store import check_run_name


@dataclass(frozen=True)
class Machine:
    """What this machine makes of the options that depend on it."""

    device: str  # the torch device, e.g. "cpu", "cuda:0"
    workers: int
    precision: str  # fp32, fp16 or bf16
    cache: bool  # the decoded-image or presized-photo cache applies and was not turned off

    @classmethod
    def of(cls, cfg: "FitConfig") -> "Machine":
        """The machine's values a resolved FitConfig holds (to resolve it again with a learning rate)."""
        return cls(device=cfg.device, workers=cfg.workers, precision=cfg.precision, cache=cfg.cache)


@dataclass(frozen=True)
class FitConfig:
    recipe: str
    epochs: int | None = None
    lr: float | str | None = None  # a number, "auto" (lr_find's valley) or "review" (a person's choice)
    bs: int | None = None
    arch: str | None = None
    pretrained: bool | None = None
    weights: str | None = None
    data: str | None = None  # a folder, an archive or an http(s):// URL, as given
    data_sha256: str | None = None  # the --data archive's (or URL's download's) SHA-256, checked when it is read
    size: int | None = None
    valid_pct: float | None = None
    labels: str | None = None  # folder: a CSV of file names and labels (fastai's from_df)
    fn_col: str | None = None  # its file-name column (a header name or a 0-based index); None: the first
    label_col: str | None = None  # its label column; None: the second
    valid_col: str | None = None  # its validation column; None: is_valid if there, else a random split
    label_delim: str | None = None  # the separator of an image's labels: a multi-label model
    label_re: str | None = None  # folder: the label is the first group of this regex on the file name
    threshold: float | None = None  # multi-label: a label is predicted above this probability; None: 0.5
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    cache: bool | None = None  # the decoded-image cache (small-image recipes); None: on where it applies
    opt: str | None = None  # fastai optimiser: adam, sgd, rmsprop, lamb, ranger
    wd: float | None = None  # weight decay; None: the optimiser's fastai default
    dropout: float | None = None  # the head's dropout (fastai's ps)
    init: str | None = None  # initialisation of the layers trained from scratch
    early_stop: int | None = None  # patience in epochs on the recipe's main metric
    save_best: bool | None = None  # export the best epoch's weights instead of the last
    activation_stats: bool | None = None  # fastai's ActivationStats -> activations.png
    seed: int | None = None
    # Augmentation (training batches only): None where not set, so the recipe decides (options.AUG_DEFAULTS)
    aug: bool | None = None
    min_scale: float | None = None
    flip_vert: bool | None = None
    max_rotate: float | None = None
    max_lighting: float | None = None
    mixup: float | None = None  # MixUp's alpha
    label_smoothing: float | None = None  # LabelSmoothingCrossEntropyFlat's eps
    out: str = "runs"
    # What the run writes besides the model (not how it trains): recorded, so --resume and the report's
    # repeat command see them too.
    interpret: bool | None = None  # the interpretation files at the end; None: yes
    top_k: int | None = None  # highest-loss images in top_losses.png/.csv; None: TOP_K
    tensorboard: bool | None = None  # fastai's TensorBoardCallback into <run>/tensorboard/
    name: str | None = None  # the run directory's name, OUT/<recipe>/NAME; None: its start time
    # MLflow tracking (trainer.tracking.mlflow): a URI or folder, "default"/True (MLFLOW_TRACKING_URI, else
    # ./mlruns); resolved to the absolute URI, None when off
    mlflow: str | bool | None = None

    def resolve(self, recipe: Recipe, machine: Machine | None = None, lr: float | None = None) -> "FitConfig":
        """Validate what was asked and fill the rest: the recipe's defaults, then `machine` (once it is known),
        then the learning rate lr_find found for --lr auto (or a person chose for --lr review). The one place a
        FitConfig's values are decided."""
        self.check()
        if recipe.check in OWN_IMAGES and not self.data:
            raise BadInput(f"recipe '{recipe.name}' trains on your own images: pass --data PATH "
                           f"(layout: {recipe.layout})")
        self.check_labelling(recipe)
        pretrained = recipe.pretrained if self.pretrained is None else self.pretrained
        machine_values = {} if machine is None else dict(device=machine.device, workers=machine.workers,
                                                         precision=machine.precision, cache=machine.cache)
        return replace(
            self,
            epochs=self.epochs or recipe.epochs,
            lr=lr if lr is not None else self.lr or recipe.lr,
            bs=self.bs or recipe.bs,
            arch=self.arch or "resnet34",
            pretrained=True if self.weights else pretrained,
            size=self.size or recipe.size,
            valid_pct=self.valid_pct if self.valid_pct is not None else recipe.valid_pct,
            seed=42 if self.seed is None else self.seed,
            opt=self.opt or "adam",
            wd=self.wd if self.wd is not None else default_wd(self.opt or "adam"),
            dropout=0.5 if self.dropout is None else self.dropout,  # fastai's head default
            init=self.init or "default",
            save_best=bool(self.save_best or self.early_stop),  # early stopping keeps the best epoch
            activation_stats=bool(self.activation_stats),
            interpret=self.interpret is not False,
            top_k=self.top_k or TOP_K,
            tensorboard=bool(self.tensorboard),
            mlflow=resolve_mlflow_uri(self.mlflow),
            **self.augmentation(recipe),
            threshold=(0.5 if self.threshold is None else self.threshold) if self.multi_label else None,
            **machine_values,
        )

    def augmentation(self, recipe: Recipe) -> dict:
        """aug and its parameters, resolved: any parameter given turns --aug on (a contradiction with --no-aug is
        refused); unset, the recipe's own choice; off, the parameters stay None (config.json shows none applied)."""
        given = [name for name in AUG_DEFAULTS if getattr(self, name) is not None and getattr(self, name) is not False]
        if self.aug is False and given:
            raise BadInput(f"--no-aug and {OPTIONS[given[0]].flag} contradict each other: drop one of them")
        presizes = recipe.transforms is presized
        if self.min_scale is not None and not presizes:
            raise BadInput(f"--min-scale sizes the random crop of the presizing recipes (folder, pets_breeds); recipe "
                           f"'{recipe.name}' does not crop: drop --min-scale (--aug still flips, rotates, zooms and "
                           f"lights its images)")
        aug = self.aug if self.aug is not None else bool(given) or recipe.aug
        if not aug:
            return dict(aug=False, **{name: None for name in AUG_DEFAULTS})
        chosen = {name: AUG_DEFAULTS[name] if getattr(self, name) is None else getattr(self, name) for name in AUG_DEFAULTS}
        return dict(aug=True, **{**chosen, **({} if presizes else {"min_scale": None})})

    def check(self) -> None:
        """Each value set against its definition (options.py): the CLI, the API and the service refuse alike."""
        for name, option in OPTIONS.items():
            value = getattr(self, name)
            if name == "device":
                continue
            if name == "mlflow":
                check_mlflow(value)
                continue
            if name == "lr" and isinstance(value, str):
                if value not in LR_WORDS:
                    raise BadInput(lr_refusal(value))
                continue
            option.check(value)
        check_device(self.device)
        if self.name is not None:
            check_run_name(self.name)
        if self.data_sha256 and not self.data:
            raise BadInput(NO_ARCHIVE_TO_CHECK)
        if self.weights and self.pretrained is False:
            raise BadInput("--weights and --no-pretrained contradict each other: drop one of them")

    @property
    def multi_label(self) -> bool:
        """Several labels per image (--labels with --label-delim): fastai's MultiCategoryBlock."""
        return bool(self.labels and self.label_delim is not None)

    def check_labelling(self, recipe: Recipe) -> None:
        """--labels, --label-re and their companions: for the folder recipe, one way of labelling at a time."""
        given = [o for o in LABELLING if getattr(self, o) is not None]
        if given and recipe.check not in OWN_IMAGES:
            raise BadInput(f"{OPTIONS[given[0]].flag} labels your own images: it is for the folder recipe, not "
                           f"'{recipe.name}' (which labels its images itself); drop it or use `trainer fit folder`")
        if self.labels is not None and self.label_re is not None:
            raise BadInput("--labels and --label-re are two ways of labelling the images: give one of them")
        if self.labels is None:
            extra = [o for o in ("fn_col", "label_col", "valid_col", "label_delim") if getattr(self, o) is not None]
            if extra:
                raise BadInput(f"{OPTIONS[extra[0]].flag} reads the --labels CSV: pass --labels FILE.csv too, or "
                               f"drop it")
        if self.labels is not None and not str(self.labels).strip():
            raise BadInput("--labels needs a CSV file name, got an empty one")
        if self.label_re is not None:
            import re

            try:
                groups = re.compile(self.label_re).groups
            except re.error as e:
                raise BadInput(f"--label-re '{self.label_re}' is not a regular expression ({e}); e.g. "
                               f"'^(.+)_\\d+\\.jpg$'") from None
            if groups < 1:
                raise BadInput(f"--label-re '{self.label_re}' has no group: put the label's part in parentheses, "
                               f"e.g. '^(.+)_\\d+\\.jpg$'")
        if self.label_delim is not None and self.label_delim == "":
            raise BadInput("--label-delim must be a separator (e.g. ' ' or ';'), got an empty one")
        if self.threshold is not None and not self.multi_label:
            raise BadInput("--threshold is for multi-label models: pass --labels FILE.csv --label-delim ' ', or "
                           "drop --threshold")
        if self.valid_col is not None and self.valid_pct is not None:
            raise BadInput("--valid-col and --valid-pct are two ways of choosing the validation images: give one")
        if self.label_smoothing is not None and self.multi_label:
            raise BadInput("--label-smoothing smooths one label per image (cross-entropy); a multi-label model trains "
                           "each label on its own (binary cross-entropy): drop --label-smoothing")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


OWN_IMAGES = ("folder", "labels", "names")  # the folder recipe's layout checks: by folder, by CSV, by name

# The options that label the folder recipe's images another way than by their folder
LABELLING = ("labels", "fn_col", "label_col", "valid_col", "label_delim", "label_re", "threshold")

# Options that depend on the machine, not on the run: a resumed run re-resolves them from what was asked.
MACHINE_OPTIONS = ("device", "precision", "workers")


def resume_config(config: dict, **given) -> FitConfig:
    """The options a resumed run continues with: its resolved training options (the same schedule,
    data and model), but the machine-dependent ones as the user asked them (or as given now), resolved
    again where it resumes: a run trained on cuda:0 resumes under --nproc 8 with each rank on its own GPU,
    or on a CPU-only machine."""
    options = dict(config["options"])
    if "tensorboard" in config:  # runs from before it was an option kept it beside them
        options.setdefault("tensorboard", config["tensorboard"])
    asked = config.get("asked") or {}  # runs from before "asked" was recorded: every machine option on auto
    for name in MACHINE_OPTIONS:
        options[name] = asked.get(name, FitConfig.__dataclass_fields__[name].default)
    for name, value in given.items():
        if value is None:
            continue
        if name == "mlflow":  # as the run resolved it: --mlflow alone is the run's own default
            check_mlflow(value)
            value = resolve_mlflow_uri(value)
            if value != options.get("mlflow"):
                has = f"--mlflow {options['mlflow']}" if options.get("mlflow") else "no --mlflow"
                raise BadInput(f"--resume continues the run's own MLflow run: it has {has}; drop --mlflow {value}")
            continue
        if name not in MACHINE_OPTIONS and name in options and value != options[name]:
            raise BadInput(f"--resume continues with the run's own options: it has {as_flag(name, options[name])}; "
                           f"drop {as_flag(name, value)}")
        options[name] = value
    data, sha256 = config["data"]["path"], None  # the folder it trained on: checked when it was made
    if is_url(options.get("data")) and not Path(data).is_dir():  # the extracted copy is gone: from the URL again
        data, sha256 = options["data"], options.get("data_sha256")
    return FitConfig(**{**options, "data": data, "data_sha256": sha256})


def default_wd(opt: str) -> float:
    """fastai's own default weight decay for an optimiser (Adam's 0.01, SGD's 0, ...), without importing fastai."""
    return FASTAI_WD[opt]
