"""typer options from trainer.options' definitions: one definition of each option, read by `trainer fit`,
`trainer lr-find` and `trainer submit` alike (name, type, range, help panel, default as --help shows it)."""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.options import BS_MAX, OPTIONS, Option


def choices(name: str, values) -> type[Enum]:
    """A str Enum of fixed choices, from the package's own list: typer shows them in --help and refuses others."""
    return Enum(name, [(value, value) for value in values], type=str)


_ENUMS = {name: choices(name.title().replace("_", ""), o.choices) for name, o in OPTIONS.items() if o.choices}


def help_text(option: Option, default: str | None = None) -> str:
    shown = option.default if default is None else default
    return f"{option.help}." + (f" \\[default: {shown}]." if shown else "")  # \\[: rich markup would eat [...]


def annotation(option: Option, default: str | None = None, panel: str | None = None):
    """`Annotated[Optional[T], typer.Option(...)]` for one option; unset (None) means the recipe's default."""
    kind = _ENUMS.get(option.name, option.kind)
    decls = [option.flag] if option.switch else [f"{option.flag}/--no-{option.flag[2:]}"] if kind is bool else []
    env = {"envvar": option.env} if option.env else {}  # --help shows "[env var: ...]"
    info = typer.Option(*decls, help=help_text(option, default), rich_help_panel=panel or option.panel,
                        show_default=False, **option.typer_range(), **env,
                        **({"metavar": option.metavar} if option.metavar else {}))
    if option.name == "lr":  # a number, 'auto' or 'review': checked by options.parse_lr and FitConfig
        kind = str
    return Annotated[Optional[kind], info]


CONFIG = "Config"  # the --help panel of --config and --print-config
ConfigPath = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE", show_default=False, rich_help_panel=CONFIG,
    help="Read the options from a YAML or JSON file: what --print-config writes, or a run's config.json (the run's "
         "options again, e.g. `--config runs/pets/ID/config.json --epochs 5`). Flags given here override it.")]
PrintConfig = Annotated[bool, typer.Option(
    "--print-config", rich_help_panel=CONFIG,
    help="Print the resolved options as YAML (what --config reads) and exit: no data is read, nothing runs.")]


def with_options(names, defaults: dict | None = None, panel: str | None = None, config: bool = False,
                 config_reads=None):
    """Add the named options to a command's signature (after its own parameters); the command receives them
    in `options`, a dict of plain values (None where not given). `config`: also --config FILE (its options
    under the flags given; its recipe and out where the command line gives none) and --print-config, which the
    command receives as `print_config`. `config_reads(given)`: the options a file may set for this call (submit
    --lr-find: lr-find's), by default `names`."""
    defaults = defaults or {}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)  # real annotations: typer reads them
        own = [p for name, p in signature.parameters.items() if name not in ("options", "print_config")]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=annotation(OPTIONS[name], defaults.get(name), panel))
                 for name in names]
        if config:
            added += [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigPath),
                      inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, default=False,
                                        annotation=PrintConfig),
                      # typer passes its click context: where --out came from (flag, TRAINER_OUT, default)
                      inspect.Parameter("click_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]

        @functools.wraps(command)
        def run(**given):
            options = {name: plain(given.pop(name)) for name in names}
            if not config:
                return command(**given, options=options)
            file, print_config, context = given.pop("config"), given.pop("print_config"), given.pop("click_context")
            if file is not None:
                options = from_config_file(file, config_reads(given) if config_reads else names, given, options,
                                           context)
            return command(**given, options=options, print_config=print_config)

        arguments = [p for p in own if isinstance(p.annotation.__metadata__[0], typer.models.ArgumentInfo)]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in arguments]
        params = arguments + added + keyword  # the definitions' panels first (Data, Model, ...), then the command's
        run.__signature__ = signature.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def from_config_file(file: Path, names, given: dict, options: dict, context: typer.Context) -> dict:
    """--config FILE's options under those given; its recipe and out fill the command's when not given (out: not
    on the command line nor in TRAINER_OUT)."""
    from trainer.config_file import merged, read_config_file

    if given.get("resume") is not None:
        from trainer.errors import BadInput

        raise BadInput("--config starts a new run from a file's options and --resume continues a run with its own: "
                       "give one of them")
    found = read_config_file(file, names)
    if "recipe" in given and given["recipe"] is None:
        given["recipe"] = found.recipe
    source = context.get_parameter_source("out")
    if found.out is not None and "out" in given and (source is None or source.name == "DEFAULT"):
        given["out"] = Path(found.out)
    return merged(found, options)


def runs_root() -> Path:
    """Where runs are when no --out is given: TRAINER_OUT, else ./runs (for commands without an --out of runs)."""
    import os

    return Path(os.environ.get("TRAINER_OUT") or RUNS)
def bare_values(command, args: list[str]) -> list[str]:
    """`command`'s arguments with the value of an option whose value may be left out (Option.bare) filled in
    where it was: `--mlflow` alone (last, or before another option) is `--mlflow default`, while `--mlflow URI`
    and `--mlflow=URI` take their value. typer has no option with an optional value, so it is given here,
    before the command parses its arguments."""
    flags = {o.flag: o.bare for o in OPTIONS.values() if o.bare}
    if not flags or command is None or not any(getattr(p, "name", None) in OPTIONS and OPTIONS[p.name].bare
                                               for p in getattr(command, "params", ())):
        return args
    filled = []
    for i, word in enumerate(args):
        if word == "--":  # the rest are arguments, not options
            return filled + args[i:]
        filled.append(word)
        if word in flags and (i + 1 == len(args) or args[i + 1].startswith("-")):
            filled.append(flags[word])
    return filled


def plain(value):
    """An Enum choice as its string, a Path as a string: what FitConfig and config.json hold."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


RUNS = Path("runs")

# Parameters shared by several commands (not training options: those come from trainer.options)
RecipeName = Annotated[str, typer.Argument(help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets).",
                                           show_default=False)]
OptionalRecipe = Annotated[Optional[str], typer.Argument(  # optional: --config FILE (or --resume) may give it
    help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets); or the --config file's recipe.",
    show_default=False)]
OutDir = Annotated[Path, typer.Option(help="Where run directories go: OUT/<recipe>/<id>/.", rich_help_panel="Outputs",
                                      envvar="TRAINER_OUT")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run directory.", rich_help_panel="Outputs")]
RunsRoot = Annotated[Path, typer.Option("--out", help="Where run directories are: OUT/<recipe>/<id>/.",
                                        envvar="TRAINER_OUT")]
Device = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
                                     envvar="TRAINER_DEVICE")]
InferenceBs = Annotated[int, typer.Option(min=1, max=BS_MAX, help="Batch size for inference.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Load fastai's model.pkl instead of model.safetensors. Unpickling runs code: only for runs "
                           "you trust.")]
Tta = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation (fastai's Learner.tta): average 4 passes with the run's training "
                  "augmentation, blended with the plain pass. Seeded: the same images give the same figures.")]
