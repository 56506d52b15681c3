"""The lr_find gate, `trainer fit --lr review`: lr_find runs as for --lr auto, then training waits for a person to
look at the curve and choose the rate.

fit calls `review` once start_run has written config.json and lr_find.json/.png (options.lr "review", lr_find's
"chosen" null). It publishes `lr_review` and waits for the answer:
  - on a terminal (stdin a tty, and not a job of the service) it asks, on stderr: a number or a suggestion's name,
    valley by default;
  - elsewhere it says once where the answer goes and polls RUN_DIR/lr_choice.json (rundir.LR_CHOICE), which the
    service writes for `POST /jobs/{id}/lr` (`trainer jobs lr ID RATE`), or a person by hand.
A signal while it waits is the normal interrupted ending (training.stopping: no checkpoint yet, so the run
directory is removed). Once chosen: `lr_chosen`, config.json rewritten with the rate in options.lr and how it was
chosen in lr_find, and the run trains with it: FitConfig.resolve decides the rate, as it does for --lr auto.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from trainer import files
from trainer.config import Machine
from trainer.errors import BadInput
from trainer.options import LR_SUGGESTIONS, chosen_lr
from trainer.runs import rundir
from trainer.training.events import EVENT_LOG, JOB_ID, Events

POLL = 0.3  # seconds between two looks for lr_choice.json
PROMPT = f"learning rate: a number, or {'/'.join(LR_SUGGESTIONS)} [valley]: "


def review(p, run_dir: Path, config: dict, events: Events):
    """Wait at the gate for the rate, record it in config.json; the Prepared run with that rate."""
    suggestions = p.lr_found["suggestions"]
    events.publish("lr_review", run_dir=str(run_dir), suggestions=suggestions, points=len(p.lr_found["losses"]))
    choice = ask(run_dir, suggestions) if on_terminal() else None  # None: no terminal, or it closed (Ctrl-D)
    if choice is None:
        choice = wait_for_file(run_dir, suggestions, events)
    events.publish("lr_chosen", lr=choice["lr"], suggestion=choice["suggestion"])
    cfg = p.asked.resolve(p.recipe, Machine.of(p.cfg), lr=choice["lr"])
    record(run_dir, config, cfg, suggestions, choice)
    return replace(p, cfg=cfg)


def record(run_dir: Path, config: dict, cfg, suggestions: dict, choice: dict) -> dict:
    """config.json with the chosen rate (options.lr, what --resume trains with) and how it was chosen."""
    config = {**config, "options": cfg.to_dict(),
              "lr_find": {"suggestions": suggestions, "chosen": choice["suggestion"] or "typed", "lr": choice["lr"],
                          "by": choice["by"], "at": choice["at"]}}
    files.write_json(run_dir / rundir.CONFIG, config)
    return config


def on_terminal() -> bool:
    """A person at a terminal answers the prompt; a service's job (TRAINER_EVENT_LOG) answers by its file."""
    return bool(sys.stdin) and sys.stdin.isatty() and not os.environ.get(EVENT_LOG)


def ask(run_dir: Path, suggestions: dict, stdin=None, out=None) -> dict | None:
    """The terminal's question, on stderr (stdout stays the run directory's line), until an answer parses; an
    empty one is valley. None when stdin closes first."""
    stdin, out = stdin or sys.stdin, out or sys.stderr
    out.write(f"lr_find's suggestions (the curve: {run_dir / rundir.LR_FIND_PNG}):\n")
    for name, value in suggestions.items():
        out.write(f"  {name:<8} {value:.2e}\n")
    while True:
        out.write(PROMPT)
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return None
        try:
            lr, suggestion = chosen_lr(line.strip() or "valley", suggestions)
        except BadInput as e:
            out.write(f"  {e}\n")
            continue
        return {"lr": lr, "suggestion": suggestion, "by": user(), "at": rundir.now_iso()}


def user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name to be had (a container without one): say where it came from
        return "terminal"


def wait_for_file(run_dir: Path, suggestions: dict, events: Events) -> dict:
    """Poll lr_choice.json until it holds a rate. A file that stays unreadable or wrong for a poll is a warning
    and is removed, so a new answer (or the service's) can take its place."""
    path = run_dir / rundir.LR_CHOICE
    job = os.environ.get(JOB_ID)
    how = f"`trainer jobs lr {job} RATE`, or write {{\"lr\": RATE}} to {path}" if job else \
        f"write {{\"lr\": RATE}} to {path}"
    events.note(f"waiting for a learning rate: {how} (RATE: a number, or one of "
                f"{', '.join(name for name in LR_SUGGESTIONS if name in suggestions)})")
    for stream in (sys.stdout, sys.stderr):  # a log file is block-buffered: the line must be there while it waits
        if stream:
            stream.flush()
    seen = None  # the wrong file's (mtime, size) at the last look
    while True:
        try:
            choice = rundir.read_lr_choice(run_dir, suggestions)
        except BadInput as e:
            stat = file_stat(path)
            if stat is not None and stat == seen:  # not a writer half way through: the file is wrong
                events.warn(f"{e}; it was removed: write the answer again")
                path.unlink(missing_ok=True)
                stat = None
            seen = stat
        else:
            if choice is not None:
                return choice
            seen = None
        time.sleep(POLL)


def file_stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
