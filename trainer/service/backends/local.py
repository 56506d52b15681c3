"""The local backend: each attempt a child process of the service, on the GPUs or CPU slots it was given."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from trainer.service.backends import Exit, Placement, signal_group


def parent_death_signal(signum: int = signal.SIGTERM):
    """A preexec_fn for a child: `signum` when its parent dies, however it dies (Linux), so a job never runs
    unsupervised. The parent may have died before the prctl: then the child goes at once."""
    parent = os.getpid()

    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)
    return arm


class LocalAttempt:
    """A job's process, started by this service: its own process group (torchrun and its workers with it)."""

    placed = True  # running from the moment Popen returns

    def __init__(self, popen: subprocess.Popen, output):
        self.popen, self.output = popen, output
        self.pid: int | None = popen.pid
        self.node = socket.gethostname()

    def poll(self) -> Exit | None:
        code = self.popen.poll()
        return None if code is None else Exit(code)

    def stop(self) -> None:
        signal_group(self.popen.pid, signal.SIGTERM)  # the run checkpoints at its next batch and stops

    def kill(self) -> None:
        signal_group(self.popen.pid, signal.SIGKILL)

    def wait(self) -> Exit:
        return Exit(self.popen.wait())

    def close(self) -> None:
        self.output.close()


class LocalBackend:
    """Slots on this machine (Settings.units): a job takes `nproc` of them, distinct GPUs on a GPU service."""

    name = "local"

    def __init__(self, settings):
        self.settings = settings

    def reserve(self, job: dict, running: list) -> Placement | None:
        """The slots for `job` if enough are free now, else None. `running`: the runner's children."""
        units = pick_units(self.settings.units, self.settings.gpus, [c.units for c in running], job["nproc"])
        if units is None:
            return None
        devices = ",".join(self.settings.units[i] for i in units) if self.settings.gpus else "cpu"
        return Placement(devices, tuple(units))

    def launch(self, job: dict, placement: Placement, command: list[str], env: dict, output: Path) -> LocalAttempt:
        """Start the attempt's process (OSError if it cannot be started)."""
        env = self.settings.child_environment(list(placement.units), **env)
        log = open(output, "ab")
        log.write(f"$ trainer {' '.join(command[3:])}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=parent_death_signal())
        except OSError:
            log.close()
            raise
        return LocalAttempt(popen, log)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def pick_units(units: list[str], gpus: bool, busy_units: list, nproc: int) -> list[int] | None:
    """`nproc` free slots (indices into `units`), or None. On GPUs: distinct GPUs, the least busy first."""
    used = {u for taken in busy_units for u in taken}
    free = [i for i in range(len(units)) if i not in used]
    if not gpus:
        return free[:nproc] if len(free) >= nproc else None
    busy: dict[str, int] = {}
    for i in used:
        busy[units[i]] = busy.get(units[i], 0) + 1
    free.sort(key=lambda i: (busy.get(units[i], 0), i))  # the least busy GPUs first
    chosen, taken = [], set()
    for i in free:  # distinct GPUs: --nproc 2 takes two of them
        if units[i] not in taken:
            chosen.append(i)
            taken.add(units[i])
    return chosen[:nproc] if len(chosen) >= nproc else None
