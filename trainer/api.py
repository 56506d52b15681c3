"""trainer as a library: the same calls the CLI makes, with the same option names and checks.

    import trainer
    run = trainer.fit("folder", data="photos", epochs=3)   # a Run: .dir, .summary, .config, .metrics
    model = trainer.load(run)                              # or trainer.load("runs/folder/latest")
    model.predict(["cat.jpg"])                             # [{"path", "predictions": [{"label", "probability"}]}]

Failures raise trainer.errors.BadInput (the input cannot work; the message says how to fix it),
TrainingFailed or TrainingInterrupted. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from trainer.config import FitConfig, resume_config
from trainer.errors import BadInput
from trainer.options import LR_FIND_OPTIONS, OPTIONS, parse_lr
from trainer.runs import rundir

# fastai's layers still use torch.jit.script, which recent torch deprecates: not the caller's concern
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")


@dataclass(frozen=True)
class Run:
    """A run directory and what it holds."""

    dir: Path
    events: list = field(default_factory=list, repr=False, compare=False)  # what was published while it ran

    @property
    def config(self) -> dict:
        return rundir.read_config(self.dir)

    @property
    def summary(self) -> dict | None:
        summary, _ = rundir.read_json(self.dir / rundir.SUMMARY)
        return summary

    @property
    def metrics(self) -> list[dict]:
        header, rows = rundir.read_metrics_or_empty(self.dir)
        return [dict(zip(header, row)) for row in rows]

    def __fspath__(self) -> str:
        return str(self.dir)


def fit_config(recipe: str, options: dict, allowed: Iterable[str] = OPTIONS, out: str | None = None) -> FitConfig:
    """A FitConfig from options by their CLI names (None: not set, so the recipe's default wins), checked."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        from trainer.errors import did_you_mean

        raise BadInput(f"unknown option '{unknown[0]}'{did_you_mean(unknown[0], allowed)}; "
                       f"the options are {', '.join(allowed)}")
    given = {name: value for name, value in options.items() if value is not None}
    if "lr" in given:
        given["lr"] = parse_lr(given["lr"])
    if "weights" in given:
        given["weights"] = str(given["weights"])
    if "data" in given:
        given["data"] = str(given["data"])
    cfg = FitConfig(recipe=recipe, **given, **({"out": str(out)} if out is not None else {}))
    cfg.check()
    return cfg


def subscribers_for(on_event: Callable | None, progress: bool, quiet: bool = False) -> list:
    """The subscribers of an API call: the caller's own, and a terminal display unless progress=False."""
    from trainer.training.events import event_log_from_environment

    subscribers = [on_event] if on_event else []
    subscribers += event_log_from_environment()  # a job the service started: its events, for the service
    if progress:
        from rich.console import Console

        from trainer.training.console import ConsoleDisplay

        plain = dict(highlight=False, soft_wrap=True, markup=False, emoji=False)  # user values print literally
        subscribers.append(ConsoleDisplay(Console(**plain), quiet=quiet, errors=Console(stderr=True, **plain)))
    return subscribers


def fit(recipe: str | None = None, *, resume: str | Path | None = None, nproc: int | None = None,
        out: str | Path = "runs", on_event: Callable | None = None, progress: bool = True,
        subscribers: Iterable[Callable] = (), quiet: bool = False, **options) -> Run:
    """`trainer fit RECIPE --option value ...` as a call: train and return the Run.

    `resume`: a run directory to continue (only device, precision and the output options may be given).
    `nproc`: train in N processes under torchrun. `on_event`: called with every training event
    (trainer.training.events); `progress=False` prints nothing."""
    subscribers = [*subscribers, *subscribers_for(on_event, progress, quiet)]
    if resume is not None:
        return resume_run(resume, out, nproc, subscribers, quiet, **options)
    if recipe is None:
        raise BadInput(needs_recipe("fit"))
    cfg = fit_config(recipe, options, out=str(out))
    if nproc is not None:
        return launched(nproc, cfg, ["fit", recipe, *cli_args(cfg.to_dict()), *(["--quiet"] if quiet else [])])
    from trainer.training.events import Events, Recorder
    from trainer.training.fit import fit as run_fit

    recorder = Recorder()
    run_dir, _ = run_fit(cfg, Events(recorder, *subscribers))
    return Run(run_dir, recorder.events) if run_dir is not None else None


def needs_recipe(command: str) -> str:
    resume = ", or --resume RUN_DIR" if command == "fit" else ""
    return (f"trainer {command} needs a RECIPE (see `trainer datasets`){resume}, or --config FILE with a "
            f"'recipe:' line")


def resolved_config(recipe: str | None, options: dict, out: str | Path = "runs", resume: str | Path | None = None,
                    allowed: Iterable[str] = OPTIONS, command: str = "fit") -> FitConfig:
    """The options resolved as far as they can be without the data or this machine (what --print-config shows):
    the recipe's defaults under what was given; the machine's (device auto, workers, cache) as asked. With
    `resume`, what the run continues with."""
    from trainer.recipes import get_recipe

    if resume is not None:
        from trainer.runs.store import resolve_run

        check_resume_options(options)
        run_dir = resolve_run(str(resume), Path(out), need_model=False)
        return resume_config(rundir.read_config(run_dir), **{name: options.get(name) for name in MACHINE + OUTPUTS})
    if recipe is None:
        raise BadInput(needs_recipe(command))
    if command == "lr-find" and options.get("lr") is not None:
        from trainer.options import LR_FIND_TAKES_NO_LR

        raise BadInput(LR_FIND_TAKES_NO_LR)
    return fit_config(recipe, options, allowed, out=str(out)).resolve(get_recipe(recipe))


MACHINE = ("device", "precision")
OUTPUTS = ("interpret", "top_k", "tensorboard", "mlflow")


def resume_run(run: str | Path, out: str | Path, nproc: int | None, subscribers: list, quiet: bool,
               **options) -> Run:
    """Continue an interrupted run with its own options; only the machine and output options may be given."""
    from trainer.runs.store import resolve_run

    check_resume_options(options)
    run_dir = resolve_run(str(run), Path(out), need_model=False)
    given = {name: options.get(name) for name in MACHINE + OUTPUTS}
    if nproc is not None:
        cfg = resume_config(rundir.read_config(run_dir), **given)  # checks the output options against the run's
        words = [a for name in given if given[name] is not None for a in cli_args({name: given[name]})]
        return launched(nproc, cfg, ["fit", "--resume", str(run_dir), *words, *(["--quiet"] if quiet else [])],
                        run_dir)
    from trainer.training.events import Events, Recorder
    from trainer.training.fit import resume as run_resume

    recorder = Recorder()
    run_dir, _ = run_resume(run_dir, Events(recorder, *subscribers), **given)
    return Run(run_dir, recorder.events) if run_dir is not None else None


def check_resume_options(options: dict) -> None:
    fixed = [name for name, value in options.items() if value is not None and name not in MACHINE + OUTPUTS]
    if fixed:
        raise BadInput(f"--resume continues with the run's own options; drop {', '.join(fixed)} "
                       f"(only --device and --precision may change on resume)")


def cli_args(options: dict) -> list[str]:
    from trainer.options import as_args

    return as_args({name: value for name, value in options.items() if name not in ("recipe", "out")}) + \
        (["--out", str(options["out"])] if options.get("out") else [])


def launched(nproc: int, cfg: FitConfig, args: list[str], run_dir: Path | None = None) -> Run | None:
    """`nproc` processes under torchrun, each running `trainer ARGS` (built from the resolved options, not
    from sys.argv); the Run rank 0 wrote."""
    from trainer.runs.store import run_dirs
    from trainer.training.distributed import launch

    before = set(run_dirs(Path(cfg.out), cfg.recipe))
    code = launch(nproc, args, cfg)
    if code:
        raise BadInput("")  # every rank refused the same bad input and said why
    if run_dir is None:
        new = [d for d in run_dirs(Path(cfg.out), cfg.recipe) if d not in before]
        run_dir = new[-1] if new else None
    return Run(run_dir) if run_dir is not None else None


def lr_find(recipe: str | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            out: str | Path = "runs", on_event: Callable | None = None, progress: bool = True,
            subscribers: Iterable[Callable] = (), quiet: bool = False, **options) -> dict:
    """`trainer lr-find RECIPE`: {"run": Run, "suggestions": {minimum, steep, valley, slide}, ...the curve}."""
    from trainer.training.events import Events, Recorder
    from trainer.training.fit import lr_find as run_lr_find

    if options.get("lr") is not None:
        from trainer.options import LR_FIND_TAKES_NO_LR

        raise BadInput(LR_FIND_TAKES_NO_LR)
    if recipe is None:
        raise BadInput(needs_recipe("lr-find"))
    cfg = fit_config(recipe, options, allowed=LR_FIND_OPTIONS, out=str(out))
    recorder = Recorder()
    run_dir, result = run_lr_find(cfg, Events(recorder, *subscribers, *subscribers_for(on_event, progress, quiet)),
                                  start_lr=start_lr, end_lr=end_lr, num_it=num_it)
    return {"run": Run(run_dir, recorder.events), **result}


def load(run: str | Path | Run, out: str | Path = "runs", device: str = "auto", trust_pickle: bool = False):
    """A trained run's model: a run directory, a Run, a run id, 'latest' or a recipe name (its newest run)."""
    from trainer.serving.model import Model

    return Model.open(run, Path(out), device, trust_pickle)

