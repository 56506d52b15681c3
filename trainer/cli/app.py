"""The typer app and the one place where errors become exit codes and one line on stderr."""

from __future__ import annotations

import sys
import warnings
from enum import Enum

import typer
from typer.core import TyperGroup

from trainer.errors import BadInput, TrainingFailed, TrainingInterrupted, did_you_mean
from trainer.options import OPTIONS

# fastai's layers still use torch.jit.script, which recent torch deprecates: not the user's concern
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")

# What a command may raise for the user, with its exit code: BadInput 2, TrainingFailed 1, TrainingInterrupted
# 128 + the signal; Ctrl-C outside a training loop is TrainingInterrupted("... nothing was saved", SIGINT).
HANDLED = (BadInput, TrainingFailed, TrainingInterrupted)


def console(stderr: bool = False):
    from rich.console import Console

    # user values (paths, run ids, class names, option values) print literally: no [markup] and no :emoji:
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)


def report_error(error: Exception) -> int:
    """One line on stderr (printed literally: no markup from user values), and the error's exit code."""
    label = "interrupted" if isinstance(error, TrainingInterrupted) else "error"
    if str(error):  # a distributed worker other than rank 0 stops quietly: rank 0 reports
        from rich.text import Text

        line = Text(f"{label}:", style="bold red")
        line.append(f" {error}")
        console(stderr=True).print(line)
    return error.exit_code


class OneLineErrors(TyperGroup):
    """Every failure as one line on stderr with its exit code: typer's usage errors (a bad choice, a number out
    of range, a missing argument) instead of a usage box, and what the commands raise (HANDLED) instead of a
    traceback. Sub-command groups inherit it. A command's options whose value may be left out (`--mlflow` alone)
    get it here, before the command parses its arguments."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        from trainer.cli.options import bare_values

        return name, command, bare_values(command, rest)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HANDLED as error:
            raise typer.Exit(report_error(error)) from None
        except KeyboardInterrupt:  # outside a training loop: nothing was written that needs saving
            raise typer.Exit(report_error(TrainingInterrupted("stopped by Ctrl-C; nothing was saved", 2))) from None

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
                report_error(BadInput(usage_line(error)))
            sys.exit(error.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            console(stderr=True).print("Aborted.")
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
    option = OPTIONS.get(param.name)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if option is not None and option.typer_range() != {k: v for k, v in (("min", low), ("max", high)) if v is not None}:
        option = None  # a parameter of another command that shares the name (serve --workers)
    if option is not None and bounds:  # a training option: the words of its definition, as the API says them
        try:
            option.check(option.kind(given))
        except (BadInput, ValueError) as refused:
            return str(refused)
    if "ge" in bounds:
        return f"{flag} must be {number} of at least {bounds['ge']}, got {given}"
    if "le" in bounds:
        return f"{flag} must be {number} of at most {bounds['le']}, got {given}"
    if problem["type"] in ("int_parsing", "float_parsing", "int_from_float"):
        return f"{flag} must be {number}, got '{given}'"
    return f"{flag}: {problem['msg']}, got '{given}'"


def installed_version() -> str:
    """The installed package's version, read from its metadata: nothing heavy is imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainer")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from trainer import __version__

        return __version__


def print_version(asked: bool) -> None:
    if asked:
        print(f"trainer {installed_version()}")
        raise typer.Exit()


app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai's image classification recipes as one command: fit, lr-find, interpret, predict, "
                       "export, serve.")
