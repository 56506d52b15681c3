"""report.html: one self-contained page per run, to read or send without Python.

Everything comes from the files in the run directory (config.json, metrics.csv, summary.json,
the interpretation CSVs, the PNGs), and images are embedded as data URIs, so the page needs
no network and survives being mailed on its own. No torch or fastai here.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import shlex
from pathlib import Path

from trainer.config import MACHINE_OPTIONS
from trainer.options import LR_FIND_OPTIONS, TOP_K, as_flag
from trainer.runs import rundir
from trainer.runs.rundir import read_json
from trainer.recipes import lower_is_better
from trainer.files import write_text

IMAGES = [  # (file, caption), in reading order; the ones a run has are shown
    (rundir.HISTORY, "Loss and metrics per epoch"),
    (rundir.LR_FIND_PNG, "Learning-rate finder"),
    (rundir.ACTIVATIONS_PNG, "Activation statistics per layer (--activation-stats)"),
    (rundir.BATCH, "A training batch"),
    (rundir.RESULTS, "Validation predictions"),
    (f"{rundir.CONFUSION}.png", "Confusion matrix (counts)"),
    (f"{rundir.CONFUSION_NORMALIZED}.png", "Confusion matrix (each row sums to 1)"),
    (f"{rundir.MOST_CONFUSED}.png", "Most confused pairs (actual → predicted)"),
    (f"{rundir.LABEL_CONFUSION}.png", "One confusion matrix per label (multi-label)"),
    (f"{rundir.TEST_CONFUSION}.png", "Test set confusion matrix (trainer evaluate)"),
    (f"{rundir.TEST_LABEL_CONFUSION}.png", "Test set: one confusion matrix per label (trainer evaluate)"),
    (f"{rundir.TOP_LOSSES}.png", "Highest-loss validation images"),
]

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
code, pre { background: #f4f4f4; padding: 0.15em 0.35em; border-radius: 3px; }
pre { padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 0.25em 0.7em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { color: #555; } img { max-width: 100%; border: 1px solid #eee; }
.met { color: #1a7f37; font-weight: 600; } .missed { color: #c62828; font-weight: 600; } .muted { color: #777; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.6g}</td>'
    if isinstance(value, str) and value.replace(".", "", 1).replace("e-", "", 1).isdigit():
        return f'<td class="num">{esc(value)}</td>'
    return f"<td>{esc(value)}</td>"


def table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def read_csv(path: Path) -> tuple[list, list[list]]:
    try:
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
        return header, rows
    except (OSError, ValueError):
        return [], []


# A repeat command leaves out the machine's own options (MACHINE_OPTIONS: resolved again where it runs)
# and these defaults.
DEFAULTS = {"out": "runs", "cache": True, "interpret": True, "top_k": TOP_K}
NEGATABLE = ("pretrained", "cache", "interpret", "tensorboard")  # the flags with a --no- form
# `trainer lr-find` takes the data and model options of fit (options.LR_FIND_OPTIONS), and --out.
LR_FIND_WORDS = (*LR_FIND_OPTIONS, "out")


def reproduce_command(config: dict) -> str:
    """The `trainer` command that repeats this run, from its recorded (resolved) options."""
    options = dict(config.get("options") or {})
    if not options:
        return ""
    if "tensorboard" in config:  # runs from before it was an option kept it beside them
        options.setdefault("tensorboard", config["tensorboard"])
    command = config.get("command", "fit")
    words = ["trainer", command, str(options.pop("recipe", "?"))]
    for name, value in options.items():
        if (value is None or name in MACHINE_OPTIONS or name == "name"  # the repeat is a new run: a name of its own
                or (name in DEFAULTS and DEFAULTS[name] == value)
                or command == "lr-find" and name not in LR_FIND_WORDS):
            continue
        if isinstance(value, bool):
            if value or name in NEGATABLE:
                words.append(as_flag(name, value))
        else:
            words += ["--" + name.replace("_", "-"), str(value)]
    world_size = (config.get("distributed") or {}).get("world_size", 1)
    if world_size > 1:
        words += ["--nproc", str(world_size)]
    return shlex.join(words)


def baseline_html(baseline: dict | None) -> str:
    if not baseline:
        return '<p class="muted">This recipe has no expected baseline.</p>'
    wanted = "at most" if lower_is_better(baseline["metric"]) else "at least"
    settings = f"{baseline['epochs']} epoch(s), {baseline['arch']}, {'pretrained' if baseline['pretrained'] else 'from scratch'}"
    actual = "" if baseline.get("actual") is None else f"; this run: {baseline['actual']:.4f}"
    status = baseline["status"]
    css = {"met": "met", "missed": "missed"}.get(status, "muted")
    return (f'<p>Expected {esc(baseline["metric"])} {wanted} {baseline["expected"]:g} for {esc(settings)} '
            f'({esc(baseline["source"])}){esc(actual)}: <span class="{css}">{esc(status)}</span>.</p>')


def judge_baseline(recipe: str, config: dict, final: dict) -> dict | None:
    """For runs whose summary.json predates baselines: judge them against the recipe's now."""
    from trainer.recipes import RECIPES

    return RECIPES[recipe].judge(config.get("options") or {}, final) if recipe in RECIPES else None


def build_report(run_dir: Path) -> str:
    """report.html's content: every section the run's files allow, in reading order."""
    config, _ = read_json(run_dir / rundir.CONFIG)
    summary, _ = read_json(run_dir / rundir.SUMMARY)
    config, summary = config or {}, summary or {}
    recipe = (config.get("recipe") or {}).get("name", run_dir.parent.name)
    parts = [f"<h1>{esc(recipe)} · run {esc(run_dir.name)}</h1>",
             f'<p class="muted">started {esc(config.get("started", "?"))} · {esc(config.get("command", "?"))} · '
             f'{esc((config.get("device") or {}).get("name", "?"))}</p>']
    command = reproduce_command(config)
    if command:
        parts.append(f"<h2>Command</h2><pre>{esc(command)}</pre>")
    parts += [result_section(recipe, config, summary), *table_sections(run_dir), *figure_sections(run_dir)]
    interpretation, _ = read_json(run_dir / f"{rundir.PER_CLASS}.json")
    tta = " (with test-time augmentation)" if (interpretation or {}).get("tta") else ""
    for name, title in ((f"{rundir.PER_CLASS}.csv", f"Per-class report{tta}"),
                        (f"{rundir.MOST_CONFUSED}.csv", f"Most confused pairs{tta}"),
                        (f"{rundir.TOP_LOSSES}.csv", f"Top losses{tta}")):
        header, rows = read_csv(run_dir / name)
        if header:
            parts.append(f"<h2>{title}</h2>" + table(header, rows))
    lr_find, _ = read_json(run_dir / rundir.LR_FIND_JSON)
    if lr_find and isinstance(lr_find.get("suggestions"), dict):
        parts.append("<h2>Learning-rate suggestions</h2>"
                     + table(["method", "lr"], [[k, v] for k, v in lr_find["suggestions"].items()]))
    if config:
        parts.append("<h2>Configuration</h2><pre>" + esc(json.dumps(config, indent=2)) + "</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(recipe)} · {esc(run_dir.name)}</title><style>{STYLE}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>\n")


def result_section(recipe: str, config: dict, summary: dict) -> str:
    if not summary:
        return '<h2>Result</h2><p class="missed">No summary.json: the run did not finish.</p>'
    final = summary.get("final", {})
    rows = [[k, v] for k, v in final.items()]
    rows += [["wall time (s)", summary.get("wall_seconds")], ["train images/s", summary.get("train_images_per_second")]]
    return ("<h2>Result</h2>" + table(["metric", "value"], rows)
            + baseline_html(summary.get("baseline") or judge_baseline(recipe, config, final)))


def table_sections(run_dir: Path) -> list[str]:
    """The test set's figures (trainer evaluate) and the metrics per epoch."""
    parts = []
    test, _ = read_json(run_dir / rundir.TEST_METRICS)
    if test:
        tta = " (with test-time augmentation)" if test.get("tta") else ""
        parts.append(f"<h2>Test set</h2><p>{esc(test.get('data'))}: {test.get('n')} images{tta}</p>"
                     + table(["metric", "value"], [[k, test.get(k)] for k in ("accuracy", "error_rate", "loss")]))
    header, rows = rundir.read_metrics_or_empty(run_dir)
    if header:  # the values as metrics.csv holds them, not rounded for display
        parts.append("<h2>Metrics per epoch</h2>" + table(header, [[str(v) for v in row] for row in rows]))
    return parts


def figure_sections(run_dir: Path) -> list[str]:
    """Every plot the run has, embedded (the page needs no other file and no network)."""
    figures = [(name, caption) for name, caption in IMAGES if (run_dir / name).is_file()]
    parts = ["<h2>Plots</h2>"] if figures else []
    for name, caption in figures:
        data = base64.b64encode((run_dir / name).read_bytes()).decode()
        parts.append(f'<figure><img alt="{esc(caption)}" data-file="{esc(name)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)} '
                     f'(<code>{esc(name)}</code>)</figcaption></figure>')
    return parts


def write_report(run_dir: Path) -> Path:
    path = run_dir / rundir.REPORT
    write_text(path, build_report(run_dir))
    return path


def rebuild_report(run_dir: Path) -> Path:
    """`trainer report`: the page again, for a run directory (one with a config.json)."""
    from trainer.errors import BadInput

    if not (run_dir / rundir.CONFIG).is_file():
        raise BadInput(f"{run_dir} is not a run directory (no {rundir.CONFIG}); see `trainer runs`")
    return write_report(run_dir)
