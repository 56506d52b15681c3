"""The `trainer` command line: parse, call, report. Heavy imports happen inside commands."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from trainer.errors import BadInput, TrainingFailed, TrainingInterrupted

# fastai's layers still use torch.jit.script, which recent torch deprecates: not the user's concern
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai's image classification recipes as one command: fit, lr-find, interpret, predict, "
                       "export, serve.")

# Options shared by the commands that build a learner (fit, lr-find).
RECIPE = typer.Argument(..., help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets).")
BS = typer.Option(None, help="Batch size \\[default: 64].")
ARCH = typer.Option(None, help="Architecture: resnet34 (default); torchvision's resnet, resnext, wide_resnet, densenet, "
                                "vgg*_bn, squeezenet, alexnet, efficientnet, mobilenet_v2/v3, convnext, regnet; or a "
                                "timm model name, exactly (timm installed).")
PRETRAINED = typer.Option(None, "--pretrained/--no-pretrained",
                          help="Start from ImageNet weights \\[default: yes, except digits].")
WEIGHTS = typer.Option(None, help="Pretrained weights from a file, no download: a state dict (.pth or .safetensors) "
                                      "saved from --arch (torchvision or timm).")
DATA = typer.Option(None, help="Dataset folder or .tgz/.tar/.zip archive \\[default: data root, then FASTAI_HOME, then download].")
SIZE = typer.Option(None, help="Image size for recipes that resize (pets, pets_breeds, folder) \\[default: 224].")
VALID_PCT = typer.Option(None, help="Random validation fraction instead of the folders' split (cifar10, folder).")
DEVICE = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
PRECISION = typer.Option("auto", help="auto (mixed on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
# fit's own: unset (None) means auto, and with --resume it means "as the run asked", re-resolved on this machine
FIT_DEVICE = typer.Option(None, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps \\[default: auto; "
                          "with --resume: what the run asked, on this machine].")
FIT_PRECISION = typer.Option(None, help="auto (mixed on CUDA, fp32 on CPU), fp32, fp16 or bf16 \\[default: auto].")
WORKERS = typer.Option(None, help="DataLoader worker processes \\[default: 0 on CPU, up to 8 on GPU].")
CACHE = typer.Option(None, "--cache/--no-cache",
                     help="Decode small images (mnist, cifar10, digits) once into a tensor cache; shrink photos "
                          "(pets, folder) once to the resize size \\[default: on].")
SEED = typer.Option(None, help="Random seed for the split, initial weights and shuffling \\[default: 42].")
OUT = typer.Option(Path("runs"), help="Where run directories go: OUT/<recipe>/<id>/.")
QUIET = typer.Option(False, "--quiet", "-q", help="Print only the run directory.")
TOP_K = typer.Option(9, help="How many of the highest-loss validation images to show.")
TRUST_PICKLE = typer.Option(False, "--trust-pickle",
                            help="Load fastai's model.pkl instead of model.safetensors. Unpickling runs code: "
                                 "only for runs you trust.")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(error: Exception) -> None:
    """One line on stderr and the error's exit code: no traceback for the user."""
    label = "interrupted" if isinstance(error, TrainingInterrupted) else "error"
    from rich.markup import escape

    if str(error):  # a distributed worker other than rank 0 stops quietly: rank 0 reports
        _console(stderr=True).print(f"[bold red]{label}:[/] {escape(str(error))}", markup=True, highlight=False)
    raise typer.Exit(error.exit_code)


def _interrupted() -> None:
    """Ctrl-C outside a training loop: nothing was written that needs saving."""
    _fail(TrainingInterrupted("stopped by Ctrl-C; nothing was saved", 2))


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise BadInput(f"--top-k must be at least 1, got {top_k}")


@app.command()
def datasets():
    """List the recipes, their defaults and where their data is found locally."""
    from rich.table import Table

    from trainer.data import find_local
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


@app.command()
def fit(
    recipe: Optional[str] = typer.Argument(None, help="A recipe from `trainer datasets` (e.g. digits, mnist_sample, pets)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train \\[default: the recipe's]."),
    lr: Optional[str] = typer.Option(None, help="Base learning rate, or 'auto' (lr_find's valley) \\[default: the recipe's]."),
    bs: Optional[int] = BS, arch: Optional[str] = ARCH, pretrained: Optional[bool] = PRETRAINED,
    weights: Optional[Path] = WEIGHTS, data: Optional[str] = DATA, size: Optional[int] = SIZE,
    valid_pct: Optional[float] = VALID_PCT, device: Optional[str] = FIT_DEVICE,
    precision: Optional[str] = FIT_PRECISION,
    workers: Optional[int] = WORKERS, cache: Optional[bool] = CACHE, seed: Optional[int] = SEED, out: Path = OUT,
    interpret: bool = typer.Option(True, "--interpret/--no-interpret",
                                   help="Write the confusion matrix and top-loss plots at the end."),
    top_k: int = TOP_K,
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run directory from its last epoch."),
    opt: Optional[str] = typer.Option(None, help="Optimiser: adam (default), sgd, rmsprop, lamb, ranger "
                                      "(fastai's; momentum follows the one-cycle schedule where it applies)."),
    wd: Optional[float] = typer.Option(None, help="Weight decay \\[default: the optimiser's fastai default, "
                                       "0.01 for adam and ranger, 0 for sgd, rmsprop, lamb]."),
    dropout: Optional[float] = typer.Option(None, help="Dropout probability of the head's last layer \\[default: 0.5]."),
    init: Optional[str] = typer.Option(None, help="Initialise the layers trained from scratch: default "
                                       "(torchvision's), kaiming (He) or xavier (Glorot)."),
    early_stop: Optional[int] = typer.Option(None, help="Stop when the recipe's main metric has not improved "
                                             "for this many epochs; keeps the best epoch's weights."),
    save_best: Optional[bool] = typer.Option(None, "--save-best", help="Export the best epoch's weights "
                                             "(by the main metric) instead of the last epoch's."),
    activation_stats: Optional[bool] = typer.Option(None, "--activation-stats", help="Record per-layer "
                                                    "activation statistics: activations.png/.json."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Log losses, metrics and learning rate per step "
                                     "to RUN_DIR/tensorboard/ (needs the tensorboard package)."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Train with N processes on this machine (one per GPU "
                                        "on CUDA, CPU processes otherwise): runs torchrun for you. --bs is per process."),
    quiet: bool = QUIET,
):
    """Train a recipe and write a run directory: model, config, metrics, plots."""
    from trainer.config import FitConfig

    console = _console()
    try:
        _check_top_k(top_k)
        options = dict(epochs=epochs, lr=lr, bs=bs, arch=arch, pretrained=pretrained, weights=weights, data=data,
                       size=size, valid_pct=valid_pct, workers=workers, cache=cache, seed=seed, opt=opt, wd=wd,
                       dropout=dropout, init=init, early_stop=early_stop, save_best=save_best,
                       activation_stats=activation_stats)
        cfg = None
        if resume:
            given = [name for name, value in dict(recipe=recipe, **options).items() if value is not None]
            if given:
                raise BadInput(f"--resume continues with the run's own options; drop {', '.join(given)} "
                               f"(only --device and --precision may change on resume)")
        elif recipe is None:
            raise BadInput("trainer fit needs a RECIPE (see `trainer datasets`), or --resume RUN_DIR")
        else:
            cfg = FitConfig(recipe=recipe, **{**options, "lr": _parse_lr(lr), "weights": weights and str(weights)},
                            device=device or "auto", precision=precision or "auto", out=str(out))
        if nproc is not None:
            from trainer.distributed import launch

            raise typer.Exit(launch(nproc, sys.argv[1:], cfg))
        if resume:
            from trainer.fit import resume as run_resume

            from trainer.runs import resolve_run

            run_dir, summary = run_resume(resolve_run(str(resume), out, need_model=False), console, quiet=quiet, live=console.is_terminal,
                                          interpret=interpret, top_k=top_k, device=device, precision=precision)
        else:
            from trainer.fit import fit as run_fit

            run_dir, summary = run_fit(cfg, console, quiet=quiet, live=console.is_terminal, interpret=interpret,
                                       top_k=top_k, tensorboard=tensorboard)
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


@app.command("lr-find")
def lr_find(
    recipe: str = RECIPE,
    start_lr: float = typer.Option(1e-7, help="Learning rate to start from."),
    end_lr: float = typer.Option(10.0, help="Learning rate to end at (stops early if the loss diverges)."),
    num_it: int = typer.Option(100, help="Number of mini-batches to try."),
    bs: Optional[int] = BS, arch: Optional[str] = ARCH, pretrained: Optional[bool] = PRETRAINED,
    weights: Optional[Path] = WEIGHTS, data: Optional[str] = DATA, size: Optional[int] = SIZE,
    valid_pct: Optional[float] = VALID_PCT, device: str = DEVICE, precision: str = PRECISION,
    workers: Optional[int] = WORKERS, cache: Optional[bool] = CACHE, seed: Optional[int] = SEED, out: Path = OUT,
    quiet: bool = QUIET,
):
    """Find a learning rate: fastai's lr_find with the minimum, steep, valley and slide suggestions."""
    from trainer.config import FitConfig

    console = _console()
    try:
        cfg = FitConfig(recipe=recipe, bs=bs, arch=arch, pretrained=pretrained,
                        weights=str(weights) if weights else None, data=data, size=size, valid_pct=valid_pct,
                        device=device, precision=precision, workers=workers, cache=cache, seed=seed, out=str(out))
        from trainer.fit import lr_find as run_lr_find

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
        console.print(f"plot: {run_dir / 'lr_find.png'}; use one with `trainer fit {recipe} --lr VALUE`, "
                      f"or `--lr auto` for valley")
    print(run_dir)


@app.command()
def interpret(
    target: str = typer.Argument(..., help="A recipe (its latest trained run under --out) or a run directory."),
    top_k: int = TOP_K,
    data: Optional[str] = typer.Option(None, help="Where the run's data is now, if it moved."),
    bs: int = typer.Option(64, help="Batch size for inference."),
    device: str = DEVICE,
    out: Path = OUT,
    trust_pickle: bool = TRUST_PICKLE,
):
    """Where the model fails: confusion matrices, top losses, most confused pairs, per-class report."""
    console = _console()
    try:
        _check_top_k(top_k)
        from trainer.runs import resolve_run
        from trainer.interpret import interpret_run

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
    target: str = typer.Argument(..., help="A run directory, or a recipe name for its newest trained run."),
    data: str = typer.Option(..., help="Labelled test images: <class>/ folders, or a folder with a test/ of them."),
    bs: int = typer.Option(64, help="Batch size for inference."),
    device: str = DEVICE,
    out: Path = OUT,
):
    """A trained run's metrics on a separate labelled test set: test_metrics.json and its confusion matrix."""
    console = _console()
    try:
        from trainer.runs import resolve_run

        run_dir = resolve_run(target, out)
        from trainer.evaluate import evaluate_run

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


@app.command()
def runs(
    recipe: Optional[str] = typer.Argument(None, help="Only this recipe's runs; or `show RUN` for one run."),
    run: Optional[str] = typer.Argument(None, help="With `show`: a run directory, run id or recipe (its newest run)."),
    out: Path = OUT,
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Past runs, newest first (`trainer runs [RECIPE]`), or one run's config and metrics (`trainer runs show RUN`)."""
    import json

    from trainer.listing import describe_or_flag, list_runs
    from trainer.runs import resolve_run

    console = _console()
    try:
        if recipe == "show":
            if run is None:
                raise BadInput("`trainer runs show` needs a RUN: a run directory, a run id or a recipe name")
            run_dir = resolve_run(run, out, need_model=False)
            _show_run(console, run_dir, describe_or_flag(run_dir), json_out)
            return
        if run is not None:
            raise BadInput(f"unexpected '{run}': use `trainer runs [RECIPE]` or `trainer runs show RUN`")
        from trainer.recipes import RECIPES

        if recipe and recipe not in RECIPES and not (out / recipe).is_dir():
            from trainer.recipes import get_recipe

            get_recipe(recipe)  # the unknown-recipe error, with its suggestion
        rows = list_runs(out, recipe)
    except BadInput as e:
        _fail(e)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no runs under {out}/" + (f"{recipe}/" if recipe else "") + "; start one with `trainer fit`")
        return
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


def _show_run(console, run_dir: Path, row: dict, json_out: bool) -> None:
    import json

    from trainer.listing import read_json
    from trainer.report import read_csv

    config, problem = read_json(run_dir / "config.json")
    header, rows = read_csv(run_dir / "metrics.csv")
    if json_out:
        print(json.dumps({**row, "config": config, "metrics": [dict(zip(header, r)) for r in rows]}, indent=2))
        return
    console.print(f"{run_dir}  ({row['state']})")
    console.print(json.dumps(config, indent=2) if config else f"config.json {problem}")
    if header:
        from rich.table import Table

        table = Table(*header, title="metrics.csv")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    if (run_dir / "report.html").is_file():
        console.print(f"report: {run_dir / 'report.html'}")


@app.command()
def report(
    target: str = typer.Argument(..., help="A run directory, run id or recipe name (its newest run)."),
    out: Path = OUT,
):
    """Rebuild a run's report.html (one self-contained page: config, metrics, plots, interpretation)."""
    try:
        from trainer.runs import resolve_run
        from trainer.report import write_report

        run_dir = resolve_run(target, out, need_model=False)
        if not (run_dir / "config.json").is_file():
            raise BadInput(f"{run_dir} is not a run directory (no config.json); see `trainer runs`")
        path = write_report(run_dir)
    except BadInput as e:
        _fail(e)
    print(path)


@app.command()
def predict(
    target: str = typer.Argument(..., help="A run directory, or a recipe for its latest trained run."),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (every image in a folder)."),
    top_k: int = typer.Option(1, help="Classes to show per image, most probable first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    bs: int = typer.Option(64, help="Batch size for inference."),
    device: str = DEVICE,
    out: Path = OUT,
    trust_pickle: bool = TRUST_PICKLE,
):
    """Predict the class of images with a trained run's model."""
    try:
        _check_top_k(top_k)
        from trainer.interpret import predict_images
        from trainer.runs import resolve_run

        results = predict_images(resolve_run(target, out), images, top_k=top_k, bs=bs, device=device,
                                 trust_pickle=trust_pickle)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    if as_json:
        import json

        print(json.dumps(results, indent=2))
        return
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
    target: str = typer.Argument(..., help="A run directory, or a recipe for its latest trained run under runs/."),
    format: str = typer.Option(..., "--format", help="onnx (needs `pip install 'trainer[export]'`) or torchscript."),
    out: Optional[Path] = typer.Option(None, help="The file (or folder) to write \\[default: RUN_DIR/model.onnx or "
                                       "RUN_DIR/model.torchscript]; its description goes to FILE.json beside it."),
    data: Optional[str] = typer.Option(None, help="Where the run's data is now, if it moved (the check uses its "
                                       "validation images)."),
):
    """The run's model as ONNX or TorchScript (fp32, any batch size), checked against PyTorch before writing."""
    try:
        from trainer.export import export_run
        from trainer.runs import resolve_run

        path, description = export_run(resolve_run(target, Path("runs")), format, out, data)
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
    target: str = typer.Argument(..., help="A run directory, or a recipe for its latest trained run."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 exposes it to the network "
                             "(it has no authentication: put a reverse proxy in front)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, help="uvicorn worker processes, each with its own copy of the model."),
    device: str = DEVICE,
    max_bytes: int = typer.Option(20_000_000, help="Largest image file accepted, in bytes."),
    max_pixels: int = typer.Option(40_000_000, help="Largest image accepted, in pixels (width x height)."),
    out: Path = OUT,
):
    """An HTTP prediction service: POST /predict (images), GET /health, and a page at / to drop images on."""
    try:
        from trainer.runs import resolve_run
        from trainer.serve import serve as run_server

        run_server(resolve_run(target, out), host, port, workers, device, max_bytes, max_pixels)
    except BadInput as e:
        _fail(e)
    except KeyboardInterrupt:
        pass  # uvicorn already stopped cleanly


@app.command()
def download(
    recipe: str = typer.Argument(..., help="A recipe from `trainer datasets`."),
    arch: str = typer.Option("resnet34", help="Architecture whose pretrained weights to cache."),
    weights: bool = typer.Option(True, "--weights/--no-weights", help="Also cache the pretrained weights."),
):
    """Fetch a recipe's data and pretrained weights ahead of time, for a machine that will be offline."""
    console = _console()
    try:
        from trainer.data import locate
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
    recipe: str = RECIPE,
    data: str = typer.Option(..., help="Dataset folder or archive (e.g. ../shared/data/mnist_sample.tgz)."),
    epochs: int = typer.Option(1, help="Epochs for the reference and trainer rows."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (the same for every row)."),
    bs: int = typer.Option(64, help="Batch size for every row."),
    rows: str = typer.Option("reference,trainer,floor,loader",
                             help="Comma-separated rows: reference, trainer, trainer-nocache, floor, loader."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON here."),
    arch: str = typer.Option("resnet34", help="The model of every row (torchvision or timm, as for fit)."),
    weights: Optional[Path] = typer.Option(None, help="Pretrained weights file: the reference row becomes the "
                                                       "notebook with pretrained=True, trainer's row fine-tunes too."),
    size: Optional[int] = typer.Option(None, help="Resize for the recipes that resize (pets, folder)."),
):
    """Benchmark: the plain fastai notebook recipe vs `trainer fit` vs the model's own training step."""
    from trainer.bench import ROWS, format_table, run_bench
    from trainer.recipes import get_recipe

    try:
        get_recipe(recipe)
        unknown = [row for row in rows.split(",") if row not in ROWS]
        if unknown:
            raise BadInput(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
        if epochs < 1:
            raise BadInput(f"--epochs must be a whole number of at least 1, got {epochs}")
        from trainer.arch import read_state_dict, resolve_arch

        resolve_arch(arch)
        if weights:
            read_state_dict(str(weights), arch)  # a bad file: one line now, not a failed row later
        result = run_bench(recipe, data, epochs, device, bs, tuple(rows.split(",")), json_out, arch=arch,
                           weights=weights and str(weights), size=size)
    except BadInput as e:
        _fail(e)
    print(format_table(result))


def _cache_weights(arch: str) -> str:
    import torch
    import torchvision.models as tvm

    from trainer.learner import resolve_arch

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
