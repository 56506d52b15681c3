"""The service's worker: claims queued jobs for free devices, runs each as its own `trainer` process, stores
what it publishes, and decides how each attempt ends.

One thread, the loop below, does all of it, so every child is started by the same long-lived thread (a child's
PR_SET_PDEATHSIG fires when the thread that started it ends: with a short-lived thread it would be killed early).
Each tick:
  1. take back orphans: jobs whose service died or whose lease ran out (their old process is waited for first);
  2. read every running job's event log into the store, and end the attempts whose process exited;
  3. pass on stop requests (cancel, from any service on the store) as SIGTERM: the run checkpoints and stops;
  4. renew the leases (a lease lost to another service means stop now: it continues the job);
  5. start the oldest queued job if enough devices are free (first come, first served: a job needing more
     devices than are free waits, and the jobs behind it wait too, so it is never starved).
A job continues from its last checkpoint with `trainer fit --resume`, the exact resume: the same result as if
nothing had happened. A failure is retried once from the checkpoint; the same failure twice ends the job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.runs import rundir
from trainer.service import store as S
from trainer.service.jobs import command_line
from trainer.training.events import EVENT_LOG, JOB_ID

TICK = 0.25  # seconds between two passes of the loop (a submission or a cancel wakes it at once)
HEARTBEAT = S.LEASE_SECONDS / 3
MAX_FAILURES = 3  # attempts that failed (each differently) before the job ends failed
STOP_GRACE = 120.0  # seconds a stopped process has to checkpoint before it is killed
EVENTS_FILE, OUTPUT_FILE = "events.jsonl", "output.log"


@dataclass
class Settings:
    runs: Path  # where run directories go (--out of every job)
    state: Path  # the service's own files: jobs/<id>/ (event log, output), datasets, token
    data_root: Path  # named data folders; the recipes' own data too (TRAINER_DATA of every job)
    units: list[str]  # one per slot: "cpu", or a GPU index ("0", "1", ...)
    gpus: bool
    max_upload: int = 4 << 30
    max_queued: int = 100  # queued jobs per token

    @property
    def device_kind(self) -> str:
        return f"GPUs {','.join(sorted(set(self.units)))}" if self.gpus else f"{len(self.units)} CPU slot" + \
            ("s" if len(self.units) != 1 else "")

    @property
    def devices_total(self) -> int:
        return len(set(self.units)) if self.gpus else len(self.units)

    def data_folders(self) -> list[str]:
        """The folders under the data root a job may name."""
        root = self.data_root
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []

    def child_environment(self, units: list[int], **extra: str) -> dict:
        """The environment of a `trainer` process the service starts (a job, or a request's task): the data
        root, only the GPUs of `units` (none on a CPU service), never the service's token."""
        env = {**os.environ, **extra, "TRAINER_DATA": str(self.data_root), "PYTHONUNBUFFERED": "1",
               "CUDA_VISIBLE_DEVICES": ",".join(self.units[i] for i in units) if self.gpus else ""}
        env.pop("TRAINER_TOKEN", None)
        return env


@dataclass
class Child:
    job_id: int
    popen: subprocess.Popen
    units: list[int]  # indices into Settings.units
    log: Path
    read: int  # bytes of the event log stored
    stop_sent: float | None = None
    output: object = field(default=None, repr=False)


def parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when the service dies, however it dies (Linux), so a job never runs on
    unsupervised; it checkpoints and stops, and the next service continues it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def job_folder(settings: Settings, job_id: int) -> Path:
    return settings.state / "jobs" / str(job_id)


def pid_is_trainer(pid: int | None) -> bool:
    """Whether `pid` is still a trainer process here (not a recycled pid)."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"trainer" in words and (b"fit" in words or b"lr-find" in words)  # a job, not a service
    except OSError:
        return True  # no /proc: assume it is ours, and wait for it


class Runner:
    def __init__(self, store: S.Store, settings: Settings):
        self.store, self.settings = store, settings
        self.owner = S.instance_id()
        self.children: dict[int, Child] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.waiting_for: dict[int, float] = {}  # orphan job id -> when we first saw its old process alive
        self.last_heartbeat = 0.0
        self.thread = threading.Thread(target=self.loop, name="trainer-runner", daemon=True)
        self.error: str | None = None

    # --- the loop -----------------------------------------------------------------------------------------

    def start(self) -> None:
        for job in self.store.list_jobs(state=S.INTERRUPTED, limit=1_000_000)[0]:  # continue by themselves
            self.store.requeue(job["id"])
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
                self.error = None
            except Exception as e:  # the database away for a moment: the next tick tries again
                self.error = f"{type(e).__name__}: {e}"
                print(f"warning: job runner: {self.error}", file=sys.stderr, flush=True)
            self.wake.wait(TICK)
            self.wake.clear()
        self.shut_down()
        self.stopped.set()

    def tick(self) -> None:
        self.take_back_orphans()
        for child in list(self.children.values()):
            self.read_child_events(child)
            if child.popen.poll() is not None:
                self.ended(child)
        self.pass_on_stops()
        if time.time() - self.last_heartbeat >= HEARTBEAT:
            self.renew_leases()
        self.start_queued()

    def free_units(self) -> list[int]:
        used = {u for child in self.children.values() for u in child.units}
        return [i for i in range(len(self.settings.units)) if i not in used]

    def pick_units(self, nproc: int) -> list[int] | None:
        free = self.free_units()
        if not self.settings.gpus:
            return free[:nproc] if len(free) >= nproc else None
        busy: dict[str, int] = {}
        for child in self.children.values():
            for u in child.units:
                busy[self.settings.units[u]] = busy.get(self.settings.units[u], 0) + 1
        free.sort(key=lambda i: (busy.get(self.settings.units[i], 0), i))  # the least busy GPUs first
        chosen, gpus = [], set()
        for i in free:  # distinct GPUs: --nproc 2 takes two of them
            if self.settings.units[i] not in gpus:
                chosen.append(i)
                gpus.add(self.settings.units[i])
        return chosen[:nproc] if len(chosen) >= nproc else None

    def start_queued(self) -> None:
        while not self.stopping.is_set():
            queue = self.store.queued()
            if not queue:
                return
            fits = [j for j in queue if j["nproc"] <= self.settings.devices_total]
            if not fits:
                return  # only jobs bigger than this service (accepted by a larger one on the store): theirs
            job = fits[0]  # first come, first served: the jobs behind it wait for it
            units = self.pick_units(job["nproc"])
            if units is None:
                return
            devices = "cpu" if not self.settings.gpus else ",".join(self.settings.units[i] for i in units)
            if self.store.claim(job["id"], self.owner, devices):
                self.launch(self.store.job(job["id"]), units)

    # --- one attempt --------------------------------------------------------------------------------------

    def launch(self, job: dict, units: list[int]) -> None:
        folder = job_folder(self.settings, job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / EVENTS_FILE
        read = self.read_events(job["id"], log, job["events_read"])  # what an earlier attempt left unread
        resume_dir = None
        run_dir = Path(job["run_dir"]) if job["run_dir"] else None
        if run_dir is not None and run_dir.is_dir():
            if job["command"] == "fit" and (run_dir / rundir.SUMMARY).is_file():
                self.store.finish(job["id"], self.owner, S.SUCCEEDED)  # it finished before its service died
                return
            if job["command"] == "fit" and (run_dir / rundir.LAST).is_file():
                resume_dir = run_dir
            elif self.inside_runs(run_dir):  # stopped before its first checkpoint: start it again, afresh
                shutil.rmtree(run_dir, ignore_errors=True)
        command = command_line(job, self.settings.runs, resume_dir)
        env = self.settings.child_environment(units, **{EVENT_LOG: str(log), JOB_ID: str(job["id"])})
        output = open(folder / OUTPUT_FILE, "ab")
        output.write(f"$ trainer {' '.join(command[3:])}\n".encode())
        output.flush()
        try:
            popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=parent_death_signal)
        except OSError as e:
            output.close()
            self.store.finish(job["id"], self.owner, S.FAILED, f"could not start the job's process ({e})", True)
            return
        self.store.set_pid(job["id"], self.owner, popen.pid)
        self.children[job["id"]] = Child(job["id"], popen, units, log, read, output=output)

    def inside_runs(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.settings.runs.resolve())

    def read_child_events(self, child: Child) -> None:
        child.read = self.read_events(child.job_id, child.log, child.read)

    def read_events(self, job_id: int, log: Path, read: int) -> int:
        """Store the whole lines of a job's event log after byte `read`; how far it is read now."""
        try:
            with open(log, "rb") as f:
                f.seek(read)
                chunk = f.read()
        except FileNotFoundError:
            return read
        end = chunk.rfind(b"\n")
        if end < 0:
            return read  # no whole line yet
        items = []
        for line in chunk[: end + 1].splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short
            if isinstance(item, dict) and isinstance(item.get("kind"), str):
                items.append(item)
        self.store.add_events(job_id, items, read + end + 1)
        return read + end + 1

    def ended(self, child: Child) -> None:
        """The attempt's process exited: the job's new state from its exit code, its stop request, its files."""
        del self.children[child.job_id]
        child.output.close()
        self.read_child_events(child)
        job = self.store.job(child.job_id)
        if job is None:
            return
        code = child.popen.returncode
        state, error, failed = outcome(job, code, job_folder(self.settings, job["id"]) / OUTPUT_FILE)
        if state == S.QUEUED and job["failures"] >= 1 and job["error"] == error:
            state = S.FAILED  # the same failure twice: trying again would fail again
        elif state == S.QUEUED and job["failures"] + 1 >= MAX_FAILURES:
            state = S.FAILED  # failing differently each time: give up all the same
        self.store.finish(job["id"], self.owner, state, error, failed)
        self.wake.set()

    def pass_on_stops(self) -> None:
        for child in self.children.values():
            job = self.store.job(child.job_id)
            if job is None:
                continue
            if job["state"] == S.STOPPING and child.stop_sent is None:
                self.signal(child, signal.SIGTERM)
                child.stop_sent = time.time()
            elif child.stop_sent is not None and time.time() - child.stop_sent > STOP_GRACE:
                self.signal(child, signal.SIGKILL)

    @staticmethod
    def signal(child: Child, signum: int) -> None:
        try:
            os.killpg(child.popen.pid, signum)  # the job's whole group: torchrun and its workers too
        except ProcessLookupError:
            pass

    @staticmethod
    def kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def renew_leases(self) -> None:
        self.last_heartbeat = time.time()
        held = self.store.heartbeat(list(self.children), self.owner)
        for job_id in set(self.children) - held:  # another service took it back: it continues the job
            child = self.children.pop(job_id)
            self.signal(child, signal.SIGKILL)
            child.popen.wait()
            child.output.close()

    def take_back_orphans(self) -> None:
        for job in self.store.orphans():
            if job["id"] in self.children:
                continue
            if pid_is_trainer(job["pid"]) and job["lease_owner"] and job["lease_owner"].split(":")[0] == \
                    S.instance_id().split(":")[0]:
                if job["id"] not in self.waiting_for:  # its service died; PR_SET_PDEATHSIG told it to stop
                    self.waiting_for[job["id"]] = time.time()
                    self.kill(job["pid"], signal.SIGTERM)
                elif time.time() - self.waiting_for[job["id"]] > STOP_GRACE:
                    self.kill(job["pid"], signal.SIGKILL)
                continue  # wait until it is gone: two processes must never write one run directory
            self.waiting_for.pop(job["id"], None)
            to = S.CANCELLED if job["stop"] == "cancel" else S.QUEUED
            self.store.take_back(job, to, "its service stopped while it ran; continuing from its last checkpoint"
                                 if to == S.QUEUED else None)

    # --- stopping the service -----------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def shut_down(self) -> None:
        """Every running job checkpoints and stops; each ends `interrupted`, and the next start continues it."""
        for child in self.children.values():
            self.store.mark_stopping(child.job_id, self.owner, "shutdown")
            self.signal(child, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE
        while self.children:
            for child in list(self.children.values()):
                self.read_child_events(child)
                if child.popen.poll() is not None:
                    self.ended(child)
                elif time.time() > deadline:
                    self.signal(child, signal.SIGKILL)
            time.sleep(0.1)


def error_line(output: Path) -> str | None:
    """The job's own one-line error, as the CLI printed it (the last `error: ` line of its output)."""
    try:
        with open(output, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.startswith(("error: ", "interrupted: "))]
    return lines[-1].split(": ", 1)[1][:500] if lines else None


def outcome(job: dict, code: int, output: Path) -> tuple[str, str | None, bool]:
    """(state, error line, whether it counts as a failure) of an attempt that exited with `code`."""
    if code == 0:
        if job["command"] == "fit" and not (job["run_dir"] and (Path(job["run_dir"]) / rundir.SUMMARY).is_file()):
            return S.QUEUED, "the job's process ended without writing summary.json", True
        return S.SUCCEEDED, None, False
    stopped = code in (130, 143, -signal.SIGTERM, -signal.SIGINT)
    if job["stop"] == "cancel":  # however it ended, the user asked it to stop: resumable from its checkpoint
        return S.CANCELLED, None, False
    if job["stop"] == "shutdown" or stopped:
        return S.INTERRUPTED, None, False
    line = error_line(output)
    if code == 2:  # bad input: the same input fails the same way, so no second try
        return S.FAILED, line or "the job's input was refused (exit 2)", True
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return S.QUEUED, f"the job's process was killed by {name}{hint}", True
    return S.QUEUED, line or f"the job's process exited with code {code}", True
