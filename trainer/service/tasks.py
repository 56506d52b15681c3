"""Short `trainer` commands the service runs for a request (predict an image, compute a run's losses): a
child process, so the service itself never imports torch. Not jobs: they leave no run directory, and what they
write into a run is written atomically by the command itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainer.errors import BadInput
from trainer.training.events import EVENT_LOG

TASK_TIMEOUT = 600.0  # seconds: a task longer than this is refused, not left hanging


class TaskFailed(BadInput):
    """The command refused or failed: its last error line, for a 4xx naming the problem."""


def run_trainer(args: list[str], settings, timeout: float = TASK_TIMEOUT, device: str | None = None) -> str:
    """`trainer ARGS` in a child on the service's machine; its stdout. The child sees the service's data root
    and, on a GPU service, its first device (Settings.child_environment); it publishes no job's events."""
    env = settings.child_environment([0])
    env.pop(EVENT_LOG, None)
    words = [sys.executable, "-m", "trainer", *args, *(["--device", device] if device else [])]
    try:
        done = subprocess.run(words, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env, cwd=Path(settings.state))
    except subprocess.TimeoutExpired:
        raise TaskFailed(f"`trainer {' '.join(args[:2])}` took over {timeout:.0f} s and was stopped") from None
    if done.returncode != 0:
        raise TaskFailed(last_error_line(done.stderr) or f"`trainer {args[0]}` failed (exit {done.returncode})")
    return done.stdout


def last_error_line(stderr: str) -> str:
    """The one line a failed command printed last (its `error: ...`), without the prefix."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line:
            return line.removeprefix("error: ").removeprefix("Error: ")
    return ""
