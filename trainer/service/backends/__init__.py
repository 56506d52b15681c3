"""Where a job's process runs. The runner (trainer.service.runner) owns the queue: it claims a job, builds its
`trainer` command line, reads its event log and decides how each attempt ends; a backend only places the
process and says how it exited.

  local  (the default) a child process of the service, on the GPUs or CPU slots it was given (local.py);
  ray    a Ray task on whichever node of a Ray cluster has the job's GPUs and CPUs free (ray_cluster.py).

Both hand the runner an attempt: `poll()` (None while it runs, then an Exit), `stop()` (SIGTERM to the job's
process group: it checkpoints and stops), `kill()`, `wait()`, and `placed` (whether its process has started: a
local one at once, a Ray task when its `placed` event arrives).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def signal_group(pid: int, signum: int) -> None:
    """`signum` to the job's whole process group (its process leads one: torchrun and its workers are in it)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Exit:
    """How an attempt's process ended."""
    code: int | None  # its exit code (negative: the signal that killed it); None: stopped on request, code unknown
    lost: str | None = None  # the backend lost the process (a Ray worker or node died): why, in one line
    counts: bool = True  # whether that loss counts as one of the job's failures (a node that died does not)


@dataclass(frozen=True)
class Placement:
    """What the runner reserved for a job before claiming it: local slots, or Ray resources."""
    devices: str  # the claim's devices: "cpu", GPU indices ("0,1"), or "ray" until Ray has placed it
    units: tuple[int, ...] = ()  # local slots (indices into Settings.units)
    resources: dict | None = None  # Ray: num_cpus, num_gpus, memory
