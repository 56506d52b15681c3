"""One resolved configuration, from the command line to fastai and into config.json.

Options the user did not set stay None until `resolve`, so the recipe's defaults win;
config.json records the resolved values. A FitConfig is frozen: a changed value is a new one (`replace`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from trainer.errors import BadInput, did_you_mean
from trainer.recipes import Recipe

DEVICES = ("auto", "cpu", "cuda", "mps")  # plus cuda:N
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "lamb", "ranger")
INITS = ("default", "kaiming", "xavier")
TOP_K = 9  # highest-loss validation images the interpretation shows


@dataclass(frozen=True)
class FitConfig:
    recipe: str
    epochs: int | None = None
    lr: float | str | None = None  # a number, or "auto": lr_find's valley
    bs: int | None = None
    arch: str | None = None
    pretrained: bool | None = None
    weights: str | None = None
    data: str | None = None
    size: int | None = None
    valid_pct: float | None = None
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
    out: str = "runs"
    # What the run writes besides the model (not how it trains): recorded, so --resume and the report's
    # repeat command see them too.
    interpret: bool | None = None  # the interpretation files at the end; None: yes
    top_k: int | None = None  # highest-loss images in top_losses.png/.csv; None: TOP_K
    tensorboard: bool | None = None  # fastai's TensorBoardCallback into <run>/tensorboard/

    def resolve(self, recipe: Recipe) -> "FitConfig":
        """Validate what the user set and fill the rest from the recipe's defaults."""
        self.check()
        if recipe.check == "folder" and not self.data:
            raise BadInput(f"recipe '{recipe.name}' trains on your own images: pass --data PATH "
                           f"(layout: {recipe.layout})")
        pretrained = recipe.pretrained if self.pretrained is None else self.pretrained
        return replace(
            self,
            epochs=self.epochs or recipe.epochs,
            lr=self.lr or recipe.lr,
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
        )

    def check(self) -> None:
        """The values the user set, each on its own (the command line checks most of them already)."""
        check_positive("--epochs", self.epochs, integer=True)
        if self.lr != "auto":
            check_positive("--lr", self.lr)
        check_positive("--bs", self.bs, integer=True)
        check_positive("--size", self.size, integer=True)
        if self.workers is not None and self.workers < 0:
            raise BadInput(f"--workers must be 0 or more, got {self.workers}")
        if self.valid_pct is not None and not 0 < self.valid_pct < 1:
            raise BadInput(f"--valid-pct must be between 0 and 1 (e.g. 0.2), got {self.valid_pct}")
        if self.device not in DEVICES and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise BadInput(f"unknown --device '{self.device}'{did_you_mean(self.device, DEVICES)}; "
                           f"use one of auto, cpu, cuda, cuda:N, mps")
        if self.precision not in PRECISIONS:
            raise BadInput(f"unknown --precision '{self.precision}'{did_you_mean(self.precision, PRECISIONS)}; "
                           f"use one of {', '.join(PRECISIONS)}")
        if self.opt is not None and self.opt not in OPTIMIZERS:
            raise BadInput(f"unknown --opt '{self.opt}'{did_you_mean(self.opt, OPTIMIZERS)}; "
                           f"use one of {', '.join(OPTIMIZERS)}")
        if self.init is not None and self.init not in INITS:
            raise BadInput(f"unknown --init '{self.init}'{did_you_mean(self.init, INITS)}; use one of {', '.join(INITS)}")
        if self.wd is not None and not (math.isfinite(self.wd) and self.wd >= 0):
            raise BadInput(f"--wd must be 0 or a positive number (e.g. 0.01), got {self.wd}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BadInput(f"--dropout must be at least 0 and below 1 (e.g. 0.5), got {self.dropout}")
        check_positive("--early-stop", self.early_stop, integer=True)
        check_positive("--top-k", self.top_k, integer=True)
        if self.weights and self.pretrained is False:
            raise BadInput("--weights and --no-pretrained contradict each other: drop one of them")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        if name not in MACHINE_OPTIONS and name in options and value != options[name]:
            raise BadInput(f"--resume continues with the run's own options: it has {as_flag(name, options[name])}; "
                           f"drop {as_flag(name, value)}")
        options[name] = value
    return FitConfig(**{**options, "data": config["data"]["path"]})


def as_flag(name: str, value) -> str:
    """An option as the command line writes it: `--top-k 5`, `--no-interpret`, `--tensorboard`."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def default_wd(opt: str) -> float:
    """fastai's own default weight decay for an optimiser (Adam's 0.01, SGD's 0, ...)."""
    import inspect

    from trainer.model.learner import optimizer# imports fastai: only reached when training

    return inspect.signature(optimizer(opt)).parameters["wd"].default


def check_positive(flag: str, value, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value) or value <= 0:
        kind = "a whole number of at least 1" if integer else "a positive number"
        raise BadInput(f"{flag} must be {kind}, got {value}")

