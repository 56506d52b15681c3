"""The `trainer` command line: parse, call, report. Heavy imports happen inside commands."""

from __future__ import annotations

import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from trainer.config import INITS, OPTIMIZERS, PRECISIONS, TOP_K
from trainer.errors import BadInput, TrainingFailed, TrainingInterrupted, did_you_mean

# fastai's layers still use torch.jit.script, which recent torch deprecates: not the user's concern
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")


def _choices(name: str, values) -> type[Enum]:
    """A str Enum of fixed choices, from the package's own list: typer shows them in --help and refuses others."""
    return Enum(name, [(value, value) for value in values], type=str)


Precision = _choices("Precision", PRECISIONS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Init = _choices("Init", INITS)
ExportFormat = _choices("ExportFormat", ("onnx", "torchscript"))  # trainer.serving.export.FORMATS, which imports torch


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


class OneLineErrors(TyperGroup):
    """typer's usage errors (a bad choice, a number out of range, a missing argument) as every other bad
    input is reported: one line on stderr, exit 2, instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # not standalone: typer hands the errors back instead of printing them its own way
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as error:
            if not standalone_mode:
                raise
            if type(error).__name__ == "NoArgsIsHelpError":  # `trainer` alone: the help (rich printed it already)
                if error.format_message():
                    error.show()
            else:
                _console(stderr=True).print(f"[bold red]error:[/] {_escape(usage_line(error))}")
            sys.exit(error.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            _console(stderr=True).print("Aborted.")
            sys.exit(1)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


def usage_line(error) -> str:
    """A usage error in the words of trainer's own checks: the option, what it must be, what was given."""
    param, cause = getattr(error, "param", None), getattr(error.__cause__, "errors", None)
    if param is None or cause is None:  # no value to name: typer's message, and where to read more
        ctx = getattr(error, "ctx", None)
        return error.format_message() + (f" (see `{ctx.command_path} --help`)" if ctx else "")
    problem = cause()[0]  # typer checks a value through pydantic, which keeps what was given
    flag, given = (param.opts or [param.name])[0], problem["input"]
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = [choice.value for choice in annotation]
        return f"unknown {flag} '{given}'{did_you_mean(str(given), choices)}; use one of {', '.join(choices)}"
    number = "a whole number" if annotation is int else "a number"
    bounds = problem.get("ctx") or {}
    if "ge" in bounds:
        return f"{flag} must be {number} of at least {bounds['ge']}, got {given}"
    if "le" in bounds:
        return f"{flag} must be {number} of at most {bounds['le']}, got {given}"
    if problem["type"] in ("int_parsing", "float_parsing", "int_from_float"):
        return f"{flag} must be {number}, got '{given}'"
    return f"{flag}: {problem['msg']}, got '{given}'"


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai's image classification recipes as one command: fit, lr-find, interpret, predict, "
                       "export, serve.")

# Panels of `trainer fit --help` (and lr-find's)
DATA, MODEL, TRAINING, HARDWARE, OUTPUTS = "Data", "Model", "Training", "Hardware", "Outputs"

# Options shared by the commands that build a learner (fit, lr-find). Unset (None) means the recipe's default.
RecipeName = Annotated[str, typer.Argument(help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets).",
                                           show_default=False)]
Data = Annotated[Optional[str], typer.Option(
    help="Dataset folder or .tgz/.tar/.zip archive \\[default: data root, then FASTAI_HOME, then download].",
    rich_help_panel=DATA)]
Size = Annotated[Optional[int], typer.Option(
    min=1, help="Image size for recipes that resize (pets, pets_breeds, folder) \\[default: 224].", rich_help_panel=DATA)]
ValidPct = Annotated[Optional[float], typer.Option(  # strictly between 0 and 1: FitConfig checks
    help="Random validation fraction instead of the folders' split (cifar10, folder).", rich_help_panel=DATA)]
Cache = Annotated[Optional[bool], typer.Option(
    "--cache/--no-cache", help="Decode small images (mnist, cifar10, digits) once into a tensor cache; shrink photos "
                               "(pets, folder) once to the resize size \\[default: on].", rich_help_panel=DATA)]
Arch = Annotated[Optional[str], typer.Option(
    help="Architecture: resnet34 (default); torchvision's resnet, resnext, wide_resnet, densenet, vgg*_bn, squeezenet, "
         "alexnet, efficientnet, mobilenet_v2/v3, convnext, regnet; or a timm model name, exactly (timm installed).",
    rich_help_panel=MODEL)]
Pretrained = Annotated[Optional[bool], typer.Option(
    "--pretrained/--no-pretrained", help="Start from ImageNet weights \\[default: yes, except digits].",
    rich_help_panel=MODEL)]
Weights = Annotated[Optional[Path], typer.Option(
    help="Pretrained weights from a file, no download: a state dict (.pth or .safetensors) saved from --arch "
         "(torchvision or timm).", rich_help_panel=MODEL)]
Bs = Annotated[Optional[int], typer.Option(min=1, help="Batch size \\[default: 64].", rich_help_panel=TRAINING)]
Seed = Annotated[Optional[int], typer.Option(
    help="Random seed for the split, initial weights and shuffling \\[default: 42].", rich_help_panel=TRAINING)]
Workers = Annotated[Optional[int], typer.Option(
    min=0, help="DataLoader worker processes \\[default: 0 on CPU, up to 8 on GPU].", rich_help_panel=HARDWARE)]
OutDir = Annotated[Path, typer.Option(help="Where run directories go: OUT/<recipe>/<id>/.", rich_help_panel=OUTPUTS)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run directory.", rich_help_panel=OUTPUTS)]

# Options of the commands that read a run
RunsRoot = Annotated[Path, typer.Option("--out", help="Where run directories are: OUT/<recipe>/<id>/.")]
Device = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")]
InferenceBs = Annotated[int, typer.Option(min=1, help="Batch size for inference.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Load fastai's model.pkl instead of model.safetensors. Unpickling runs code: only for runs "
                           "you trust.")]
RUNS = Path("runs")


def _installed_version() -> str:
    """The installed package's version, read from its metadata: nothing heavy is imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainer")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from trainer import __version__

        return __version__


def _print_version(asked: bool) -> None:
    if asked:
        print(f"trainer {_installed_version()}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True,
                                                    help="Print trainer's version and exit.")] = None,
):
    """fastai's image classification recipes as one command: fit, lr-find, interpret, predict, export, serve."""


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fail(error: Exception) -> None:
    """One line on stderr and the error's exit code: no traceback for the user."""
    label = "interrupted" if isinstance(error, TrainingInterrupted) else "error"
    if str(error):  # a distributed worker other than rank 0 stops quietly: rank 0 reports
        _console(stderr=True).print(f"[bold red]{label}:[/] {_escape(str(error))}", markup=True, highlight=False)
    raise typer.Exit(error.exit_code)


def _interrupted() -> None:
    """Ctrl-C outside a training loop: nothing was written that needs saving."""
    _fail(TrainingInterrupted("stopped by Ctrl-C; nothing was saved", 2))


@app.command()
def datasets():
    """List the recipes, their defaults and where their data is found locally."""
    from rich.table import Table

    from trainer.data.source import find_local
    from trainer.recipes import RECIPES

    table = Table("recipe", "what", "data", "epochs", "lr", "metrics", "local copy")
    table.columns[0].no_wrap = True
    for r in RECIPES.values():
        source = f"URLs.{r.url}" if r.url else ("scikit-learn" if r.name == "digits" else "--data")
        local = find_local(r)
        table.add_row(r.name, r.summary, source, str(r.epochs), f"{r.lr:g}", ", ".join(r.metrics),
                      str(local) if local else ("made on first use" if r.name == "digits" else "-"))
    console = _console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console.width = 160
    console.print(table)


def _parse_lr(lr: Optional[str]):
    if lr is None or lr == "auto":
        return lr
    try:
        return float(lr)
    except ValueError:
        raise BadInput(f"--lr must be a number (e.g. 1e-3) or 'auto', got '{lr}'") from None


# fit's own options; unset (None) means the recipe's default, or with --resume "as the run has it"
OptionalRecipe = Annotated[Optional[str], typer.Argument(
    help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets).", show_default=False)]
Dropout = Annotated[Optional[float], typer.Option(  # at least 0 and below 1: FitConfig checks
    help="Dropout probability of the head's last layer \\[default: 0.5].", rich_help_panel=MODEL)]
InitScheme = Annotated[Optional[Init], typer.Option(
    "--init", help="Initialise the layers trained from scratch: default (torchvision's), kaiming (He) or xavier "
                   "(Glorot) \\[default: default].", rich_help_panel=MODEL)]
Epochs = Annotated[Optional[int], typer.Option(
    min=1, help="Epochs to train \\[default: the recipe's].", rich_help_panel=TRAINING)]
Lr = Annotated[Optional[str], typer.Option(  # a number or 'auto': _parse_lr
    help="Base learning rate, or 'auto' (lr_find's valley) \\[default: the recipe's].", rich_help_panel=TRAINING)]
Opt = Annotated[Optional[Optimizer], typer.Option(
    help="Optimiser, fastai's (momentum follows the one-cycle schedule where it applies) \\[default: adam].",
    rich_help_panel=TRAINING)]
Wd = Annotated[Optional[float], typer.Option(  # 0 or more and finite: FitConfig checks
    help="Weight decay \\[default: the optimiser's fastai default, 0.01 for adam and ranger, 0 for sgd, rmsprop, "
         "lamb].", rich_help_panel=TRAINING)]
EarlyStop = Annotated[Optional[int], typer.Option(
    min=1, help="Stop when the recipe's main metric has not improved for this many epochs; keeps the best epoch's "
                "weights.", rich_help_panel=TRAINING)]
SaveBest = Annotated[Optional[bool], typer.Option(
    "--save-best", help="Export the best epoch's weights (by the main metric) instead of the last epoch's.",
    rich_help_panel=TRAINING)]
Resume = Annotated[Optional[Path], typer.Option(
    help="Continue an interrupted run directory from its last epoch, with its own options.", rich_help_panel=TRAINING)]
FitDevice = Annotated[Optional[str], typer.Option(
    "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps \\[default: auto; with --resume: "
                     "what the run asked, on this machine].", rich_help_panel=HARDWARE)]
FitPrecision = Annotated[Optional[Precision], typer.Option(
    "--precision", help="auto: mixed on CUDA, fp32 on CPU \\[default: auto].", rich_help_panel=HARDWARE)]
Nproc = Annotated[Optional[int], typer.Option(
    min=1, help="Train with N processes on this machine (one per GPU on CUDA, CPU processes otherwise): runs "
                "torchrun for you. --bs is per process.", rich_help_panel=HARDWARE)]
Interpret = Annotated[Optional[bool], typer.Option(
    "--interpret/--no-interpret", help="Write the confusion matrix and top-loss plots at the end "
                                       "\\[default: interpret].", rich_help_panel=OUTPUTS)]
FitTopK = Annotated[Optional[int], typer.Option(
    "--top-k", min=1, help=f"How many of the highest-loss validation images to show \\[default: {TOP_K}].",
    rich_help_panel=OUTPUTS)]
Tensorboard = Annotated[Optional[bool], typer.Option(
    "--tensorboard/--no-tensorboard", help="Log losses, metrics and learning rate per step to RUN_DIR/tensorboard/ "
                                           "(needs the tensorboard package) \\[default: no].", rich_help_panel=OUTPUTS)]
ActivationStats = Annotated[Optional[bool], typer.Option(
    "--activation-stats", help="Record per-layer activation statistics: activations.png/.json.",
    rich_help_panel=OUTPUTS)]


@app.command()
def fit(
    recipe: OptionalRecipe = None,
    data: Data = None, size: Size = None, valid_pct: ValidPct = None, cache: Cache = None,
    arch: Arch = None, pretrained: Pretrained = None, weights: Weights = None, dropout: Dropout = None,
    init: InitScheme = None,
    epochs: Epochs = None, lr: Lr = None, bs: Bs = None, opt: Opt = None, wd: Wd = None, early_stop: EarlyStop = None,
    save_best: SaveBest = None, seed: Seed = None, resume: Resume = None,
    device: FitDevice = None, precision: FitPrecision = None, workers: Workers = None, nproc: Nproc = None,
    out: OutDir = RUNS, interpret: Interpret = None, top_k: FitTopK = None, tensorboard: Tensorboard = None,
    activation_stats: ActivationStats = None, quiet: Quiet = False,
):
    """Train a recipe and write a run directory: model, config, metrics, plots."""
    options = dict(epochs=epochs, lr=lr, bs=bs, arch=arch, pretrained=pretrained, weights=weights and str(weights),
                   data=data, size=size, valid_pct=valid_pct, workers=workers, cache=cache, seed=seed, opt=_value(opt),
                   wd=wd, dropout=dropout, init=_value(init), early_stop=early_stop, save_best=save_best,
                   activation_stats=activation_stats)
    outputs = dict(interpret=interpret, top_k=top_k, tensorboard=tensorboard)
    console = _console()
    try:
        run_dir, summary = _fit_or_resume(recipe, options, outputs, dict(device=device, precision=_value(precision)),
                                          resume, out, nproc, console, quiet)
    except (BadInput, TrainingFailed, TrainingInterrupted) as e:
        _fail(e)
    except KeyboardInterrupt:  # before training started: nothing to save
        _interrupted()
    if run_dir is None:  # a distributed worker other than rank 0: rank 0 reports
        return
    if not quiet:
        _print_summary(console, summary)
        console.print(f"report: {run_dir / 'report.html'}")
    print(run_dir)


def _fit_or_resume(recipe, options: dict, outputs: dict, machine: dict, resume: Path | None, out: Path,
                   nproc: int | None, console, quiet: bool):
    """A new run from the options, or --resume with the run's own (only the machine may change): (run_dir, summary)."""
    from trainer.config import FitConfig

    cfg = None
    if resume:
        given = [name for name, value in dict(recipe=recipe, **options).items() if value is not None]
        if given:
            raise BadInput(f"--resume continues with the run's own options; drop {', '.join(given)} "
                           f"(only --device and --precision may change on resume)")
    elif recipe is None:
        raise BadInput("trainer fit needs a RECIPE (see `trainer datasets`), or --resume RUN_DIR")
    else:
        cfg = FitConfig(recipe=recipe, **{**options, "lr": _parse_lr(options["lr"])}, **outputs,
                        device=machine["device"] or "auto", precision=machine["precision"] or "auto", out=str(out))
    if nproc is not None:
        from trainer.training.distributed import launch

        raise typer.Exit(launch(nproc, sys.argv[1:], cfg))
    if resume:
        from trainer.training.fit import resume as run_resume
        from trainer.runs.store import resolve_run

        run_dir = resolve_run(str(resume), out, need_model=False)
        return run_resume(run_dir, console, quiet=quiet, live=console.is_terminal, **machine, **outputs)
    from trainer.training.fit import fit as run_fit

    return run_fit(cfg, console, quiet=quiet, live=console.is_terminal)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table("metric", "value", title=f"{summary['recipe']} · run {summary['run']}")
    for name, value in summary["final"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("train images/s", f"{summary['train_images_per_second']:.1f}")
    table.add_row("device", f"{summary['device']} ({summary['precision']})")
    baseline = summary.get("baseline")
    if baseline and baseline["status"] != "not comparable":
        table.add_row("baseline", f"{baseline['metric']} {baseline['expected']:g}: {baseline['status']}")
    console.print(table)
    if "interpretation" in summary:
        _print_confused(console, summary["interpretation"]["most_confused"])


def _print_confused(console, pairs) -> None:
    if pairs:
        console.print("most confused (actual -> predicted, count): "
                      + ", ".join(f"{a} -> {p} ({n})" for a, p, n in pairs))


LR_FIND = "lr_find"


@app.command("lr-find")
def lr_find(
    recipe: RecipeName,
    start_lr: Annotated[float, typer.Option(help="Learning rate to start from.", rich_help_panel=LR_FIND)] = 1e-7,
    end_lr: Annotated[float, typer.Option(
        help="Learning rate to end at (stops early if the loss diverges).", rich_help_panel=LR_FIND)] = 10.0,
    num_it: Annotated[int, typer.Option(
        min=10, help="Number of mini-batches to try (fastai drops the first and last points).",
        rich_help_panel=LR_FIND)] = 100,
    data: Data = None, size: Size = None, valid_pct: ValidPct = None, cache: Cache = None,
    arch: Arch = None, pretrained: Pretrained = None, weights: Weights = None, bs: Bs = None, seed: Seed = None,
    device: Annotated[str, typer.Option(
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.", rich_help_panel=HARDWARE)] = "auto",
    precision: Annotated[Precision, typer.Option(
        help="auto: mixed on CUDA, fp32 on CPU.", rich_help_panel=HARDWARE)] = Precision.auto,
    workers: Workers = None, out: OutDir = RUNS, quiet: Quiet = False,
):
    """Find a learning rate: fastai's lr_find with the minimum, steep, valley and slide suggestions."""
    from trainer.config import FitConfig
    from trainer.runs.rundir import LR_FIND_PNG

    console = _console()
    try:
        cfg = FitConfig(recipe=recipe, bs=bs, arch=arch, pretrained=pretrained,
                        weights=str(weights) if weights else None, data=data, size=size, valid_pct=valid_pct,
                        device=device, precision=precision.value, workers=workers, cache=cache, seed=seed,
                        out=str(out))
        from trainer.training.fit import lr_find as run_lr_find

        run_dir, result = run_lr_find(cfg, console, quiet=quiet, start_lr=start_lr, end_lr=end_lr, num_it=num_it)
    except (BadInput, TrainingFailed) as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    if not quiet:
        from rich.table import Table

        table = Table("suggestion", "learning rate", title=f"lr_find · {recipe}")
        for name, value in result["suggestions"].items():
            table.add_row(name, f"{value:.2e}")
        console.print(table)
        console.print(f"plot: {run_dir / LR_FIND_PNG}; use one with `trainer fit {recipe} --lr VALUE`, "
                      f"or `--lr auto` for valley")
    print(run_dir)


@app.command()
def interpret(
    target: Annotated[str, typer.Argument(help="A recipe (its latest trained run under --out) or a run directory.",
                                          show_default=False)],
    top_k: Annotated[int, typer.Option(min=1, help="How many of the highest-loss validation images to show.")] = TOP_K,
    data: Annotated[Optional[str], typer.Option(help="Where the run's data is now, if it moved.")] = None,
    bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS, trust_pickle: TrustPickle = False,
):
    """Where the model fails: confusion matrices, top losses, most confused pairs, per-class report."""
    console = _console()
    try:
        from trainer.inspection.interpret import interpret_run
        from trainer.runs.store import resolve_run

        run_dir = resolve_run(target, out)
        report = interpret_run(run_dir, top_k=top_k, data=data, bs=bs, device=device, trust_pickle=trust_pickle)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    console.print(f"accuracy {report['accuracy']:.4f} on {report['n']} validation images")
    _print_confused(console, report["most_confused"])
    console.print("wrote confusion_matrix.png/.csv, confusion_matrix_normalized.png, top_losses.png/.csv, "
                  f"most_confused.csv{'/.png' if (run_dir / 'most_confused.png').is_file() else ''}, "
                  "per_class.csv/.json")
    print(run_dir)


@app.command()
def evaluate(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe name for its newest trained run.",
                                          show_default=False)],
    data: Annotated[str, typer.Option(help="Labelled test images: <class>/ folders, or a folder with a test/ of them.",
                                      show_default=False)],
    bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS,
):
    """A trained run's metrics on a separate labelled test set: test_metrics.json and its confusion matrix."""
    console = _console()
    try:
        from trainer.inspection.evaluate import evaluate_run
        from trainer.runs.store import resolve_run

        run_dir = resolve_run(target, out)
        result = evaluate_run(run_dir, data, bs=bs, device=device)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    console.print(f"test set {result['data']}: accuracy {result['accuracy']:.4f}, error_rate "
                  f"{result['error_rate']:.4f}, loss {result['loss']:.4f} on {result['n']} images")
    _print_confused(console, result["most_confused"][:5])
    console.print("wrote test_metrics.json, test_confusion_matrix.png/.csv")
    print(run_dir)


class ListByDefault(TyperGroup):
    """`trainer runs [RECIPE] [OPTIONS]` stays the listing: words that do not start with a sub-command are list's."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(cls=ListByDefault, help="Past runs, newest first (`trainer runs [RECIPE]`, the same as "
                                               "`trainer runs list`), or one run (`trainer runs show RUN`).")
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(
    recipe: Annotated[Optional[str], typer.Argument(help="Only this recipe's runs.", show_default=False)] = None,
    out: RunsRoot = RUNS, as_json: AsJson = False,
):
    """Past runs, newest first, with their final metrics (also `trainer runs [RECIPE]`)."""
    from trainer.runs.listing import list_runs
    from trainer.recipes import RECIPES, get_recipe

    try:
        if recipe and recipe not in RECIPES and not (out / recipe).is_dir():
            get_recipe(recipe)  # the unknown-recipe error, with its suggestion
        rows = list_runs(out, recipe)
    except BadInput as e:
        _fail(e)
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
    elif rows:
        _print_runs(_console(), rows, out)
    else:
        _console().print(f"no runs under {out}/" + (f"{recipe}/" if recipe else "") + "; start one with `trainer fit`")


def _print_runs(console, rows: list[dict], out: Path) -> None:
    from rich.table import Table

    table = Table("id", "recipe", "arch", "epochs", "pretrained", "options", "device", "final metrics", "wall s",
                  "date", "state", title=f"runs under {out}/ (newest first)")
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, (int, float)) else f"{k} {v}"
                            for k, v in (r["final"] or {}).items() if not k.endswith("_loss"))
        cells = [r["id"], r["recipe"], r["arch"] or "-", r["epochs"] or "-",
                 {True: "yes", False: "no"}.get(r["pretrained"], "-"), r["changes"] or "", r["device"] or "-",
                 metrics or "-", f"{r['wall_seconds']:.0f}" if isinstance(r["wall_seconds"], (int, float)) else "-",
                 str(r["started"] or "-")[:16].replace("T", " "), r["state"]]
        table.add_row(*map(str, cells))  # str(): a hand-edited file may hold any JSON type
    if not console.is_terminal:
        console.width = max(console.width, 180)  # a pipe or a file gets whole cells, not ellipses
    console.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="A run directory, run id or recipe (its newest run).", show_default=False)],
    out: RunsRoot = RUNS, as_json: AsJson = False,
):
    """One run: its state, config.json and metrics.csv."""
    import json

    from trainer.runs import rundir
    from trainer.runs.listing import describe_or_flag
    from trainer.runs.store import resolve_run

    try:
        run_dir = resolve_run(run, out, need_model=False)
    except BadInput as e:
        _fail(e)
    row = describe_or_flag(run_dir)
    config, problem = rundir.read_json(run_dir / rundir.CONFIG)
    header, rows = rundir.read_metrics_or_empty(run_dir)
    if as_json:
        print(json.dumps({**row, "config": config, "metrics": [dict(zip(header, r)) for r in rows]}, indent=2))
        return
    console = _console()
    console.print(f"{run_dir}  ({row['state']})")
    console.print(json.dumps(config, indent=2) if config else f"{rundir.CONFIG} {problem}")
    if header:
        from rich.table import Table

        table = Table(*header, title=rundir.METRICS)
        for r in rows:
            table.add_row(*map(str, r))
        console.print(table)
    if (run_dir / rundir.REPORT).is_file():
        console.print(f"report: {run_dir / rundir.REPORT}")


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="A run directory, run id or recipe name (its newest run).",
                                          show_default=False)],
    out: RunsRoot = RUNS,
):
    """Rebuild a run's report.html (one self-contained page: config, metrics, plots, interpretation)."""
    try:
        from trainer.runs.report import write_report
        from trainer.runs.store import resolve_run

        run_dir = resolve_run(target, out, need_model=False)
        from trainer.runs.rundir import CONFIG

        if not (run_dir / CONFIG).is_file():
            raise BadInput(f"{run_dir} is not a run directory (no {CONFIG}); see `trainer runs`")
        path = write_report(run_dir)
    except BadInput as e:
        _fail(e)
    print(path)


@app.command()
def predict(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run.",
                                          show_default=False)],
    images: Annotated[List[Path], typer.Argument(help="Image files and/or folders (every image in a folder).",
                                                 show_default=False)],
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show per image, most probable first.")] = 1,
    as_json: AsJson = False, bs: InferenceBs = 64, device: Device = "auto", out: RunsRoot = RUNS,
    trust_pickle: TrustPickle = False,
):
    """Predict the class of images with a trained run's model."""
    try:
        from trainer.serving.inference import predict_images
        from trainer.runs.store import resolve_run

        results = predict_images(resolve_run(target, out), images, top_k=top_k, bs=bs, device=device,
                                 trust_pickle=trust_pickle)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    if as_json:
        import json

        print(json.dumps(results, indent=2))
    else:
        _print_predictions(results, top_k)


def _print_predictions(results: list[dict], top_k: int) -> None:
    from rich.table import Table

    table = Table("image", "prediction", "probability", *(["others"] if top_k > 1 else []))
    for row in results:
        if "unreadable" in row:
            table.add_row(row["path"], "unreadable", "-", *([row["unreadable"]] if top_k > 1 else []))
            continue
        best, *rest = row["predictions"]
        others = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in rest)
        table.add_row(row["path"], best["label"], f"{best['probability']:.3f}", *([others] if top_k > 1 else []))
    console = _console()
    if not console.is_terminal:
        console.width = 160
    console.print(table)


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run under runs/.",
                                          show_default=False)],
    format: Annotated[ExportFormat, typer.Option(
        "--format", help="onnx (needs `pip install 'trainer[export]'`) or torchscript.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="The file (or folder) to write \\[default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript]; its "
             "description goes to FILE.json beside it.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="Where the run's data is now, if it moved (the check uses its validation images).")] = None,
):
    """The run's model as ONNX or TorchScript (fp32, any batch size), checked against PyTorch before writing."""
    try:
        from trainer.serving.export import export_run
        from trainer.runs.store import resolve_run

        path, description = export_run(resolve_run(target, RUNS), format.value, out, data)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    check = description["check"]
    _console().print(f"checked on {check['images']} validation images: largest probability difference "
                     f"{check['max_probability_difference']:.3g} (limit {check['limit']:g})")
    print(path)


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe for its latest trained run.",
                                          show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network (it has no "
                                           "authentication: put a reverse proxy in front).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, help="uvicorn worker processes, each with its own copy of the model.")] = 1,
    device: Device = "auto",
    max_bytes: Annotated[int, typer.Option(min=1, help="Largest image file accepted, in bytes.")] = 20_000_000,
    max_pixels: Annotated[int, typer.Option(
        min=1, help="Largest image accepted, in pixels (width x height).")] = 40_000_000,
    out: RunsRoot = RUNS,
):
    """An HTTP prediction service: POST /predict (images), GET /health, and a page at / to drop images on."""
    try:
        from trainer.runs.store import resolve_run
        from trainer.serving.server import serve as run_server

        run_server(resolve_run(target, out), host, port, workers, device, max_bytes, max_pixels)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        pass  # uvicorn already stopped cleanly


@app.command()
def download(
    recipe: Annotated[str, typer.Argument(help="A recipe from `trainer datasets`.", show_default=False)],
    arch: Annotated[str, typer.Option(help="Architecture whose pretrained weights to cache.")] = "resnet34",
    weights: Annotated[bool, typer.Option("--weights/--no-weights", help="Also cache the pretrained weights.")] = True,
):
    """Fetch a recipe's data and pretrained weights ahead of time, for a machine that will be offline."""
    console = _console()
    try:
        from trainer.data.source import locate
        from trainer.recipes import get_recipe

        r = get_recipe(recipe)
        if r.check == "folder":
            raise BadInput("recipe 'folder' uses your own images (--data): there is nothing to download")
        console.print(f"data: {locate(r, None)}")
        if weights:
            console.print(f"weights: {_cache_weights(arch)}")
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()


@app.command()
def bench(
    recipe: RecipeName,
    data: Annotated[str, typer.Option(help="Dataset folder or archive (e.g. ../shared/data/mnist_sample.tgz).",
                                      show_default=False)],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs for the reference and trainer rows.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (the same for every row).")] = "cpu",
    bs: Annotated[int, typer.Option(min=1, help="Batch size for every row.")] = 64,
    rows: Annotated[str, typer.Option(
        help="Comma-separated rows: reference, trainer, trainer-nocache, floor, loader.")] = "reference,trainer,floor,loader",
    arch: Annotated[str, typer.Option(help="The model of every row (torchvision or timm, as for fit).")] = "resnet34",
    weights: Annotated[Optional[Path], typer.Option(
        help="Pretrained weights file: the reference row becomes the notebook with pretrained=True, trainer's row "
             "fine-tunes too.")] = None,
    size: Annotated[Optional[int], typer.Option(min=1, help="Resize for the recipes that resize (pets, folder).")] = None,
    as_json: AsJson = False,
    json_out: Annotated[Optional[Path], typer.Option(help="Also write the table as JSON to this file.")] = None,
):
    """Benchmark: the plain fastai notebook recipe vs `trainer fit` vs the model's own training step."""
    try:
        _check_bench(recipe, rows, arch, weights)
        from trainer.bench import run_bench

        result = run_bench(recipe, data, epochs, device, bs, tuple(rows.split(",")), json_out, arch=arch,
                           weights=weights and str(weights), size=size)
    except BadInput as e:
        _fail(e)
    if as_json:
        import json

        print(json.dumps(result, indent=2, default=str))
    else:
        from trainer.bench import format_table

        print(format_table(result))


def _check_bench(recipe: str, rows: str, arch: str, weights: Path | None) -> None:
    """Every bad input in one line now, not a failed row minutes later."""
    from trainer.model.arch import read_state_dict, resolve_arch
    from trainer.bench import ROWS
    from trainer.recipes import get_recipe

    get_recipe(recipe)
    unknown = [row for row in rows.split(",") if row not in ROWS]
    if unknown:
        raise BadInput(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    resolve_arch(arch)
    if weights:
        read_state_dict(str(weights), arch)


def _cache_weights(arch: str) -> str:
    import torch
    import torchvision.models as tvm

    from trainer.model.learner import resolve_arch

    if isinstance(resolve_arch(arch), str):
        raise BadInput(f"'{arch}' is a timm model: timm caches its own weights on first use")
    try:
        tvm.get_model_weights(arch).DEFAULT.get_state_dict(progress=True)
    except OSError as e:
        raise BadInput(f"could not download weights for {arch} ({type(e).__name__}: {e}); "
                       f"copy a torchvision state dict here and pass it with --weights") from None
    return str(Path(torch.hub.get_dir()) / "checkpoints")


def main():  # python -m trainer
    app(prog_name="trainer")


if __name__ == "__main__":
    sys.exit(main())
