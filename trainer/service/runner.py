"""The service's worker: claims queued jobs for free devices, runs each as its own `trainer` process (a child
of the service, or a Ray task on a node of a Ray cluster: trainer.service.backends), stores what it publishes,
and decides how each attempt ends.

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
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.runs import rundir
from trainer.service import store as S
from trainer.service.backends import Exit
from trainer.service.backends.local import LocalBackend
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
    cluster: object = None  # the Ray backend, whose cluster sizes the jobs (units are then this machine's tasks)

    @property
    def device_kind(self) -> str:
        if self.cluster is not None:
            return self.cluster.device_kind
        return f"GPUs {','.join(sorted(set(self.units)))}" if self.gpus else f"{len(self.units)} CPU slot" + \
            ("s" if len(self.units) != 1 else "")

    @property
    def more_devices(self) -> str:
        """How to run a job larger than this service can (the end of the refusal's line)."""
        if self.cluster is not None:
            return "add a node with more GPUs (or CPUs) to the Ray cluster"
        return "start the service with more --devices/--slots"

    @property
    def devices_total(self) -> int:
        if self.cluster is not None:
            return self.cluster.devices_total
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
    attempt: object  # the backend's handle (backends.local.LocalAttempt, backends.ray_cluster.RayAttempt)
    units: list[int]  # indices into Settings.units (the local backend's slots)
    log: Path
    read: int  # bytes of the event log stored
    stop_sent: float | None = None


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
    def __init__(self, store: S.Store, settings: Settings, backend=None):
        self.store, self.settings = store, settings
        self.backend = backend or LocalBackend(settings)  # where each attempt's process runs
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
        self.backend.close()
        self.stopped.set()

    def tick(self) -> None:
        self.take_back_orphans()
        for child in list(self.children.values()):
            self.read_child_events(child)
            if (end := child.attempt.poll()) is not None:
                self.ended(child, end)
        self.pass_on_stops()
        if time.time() - self.last_heartbeat >= HEARTBEAT:
            self.renew_leases()
            self.backend.refresh()
        self.start_queued()

    def start_queued(self) -> None:
        while not self.stopping.is_set():
            queue = self.store.queued()
            if not queue:
                return
            fits = [j for j in queue if j["nproc"] <= self.settings.devices_total]
            if not fits:
                return  # only jobs bigger than this service (accepted by a larger one on the store): theirs
            job = fits[0]  # first come, first served: the jobs behind it wait for it
            placement = self.backend.reserve(job, list(self.children.values()))
            if placement is None:
                return
            if self.store.claim(job["id"], self.owner, placement.devices):
                self.launch(self.store.job(job["id"]), placement)

    # --- one attempt --------------------------------------------------------------------------------------

    def launch(self, job: dict, placement) -> None:
        folder = job_folder(self.settings, job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / EVENTS_FILE
        read = self.read_events(job["id"], log, job["events_read"])[0]  # what an earlier attempt left unread
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
        try:
            attempt = self.backend.launch(job, placement, command, {EVENT_LOG: str(log), JOB_ID: str(job["id"])},
                                          folder / OUTPUT_FILE)
        except OSError as e:
            self.store.finish(job["id"], self.owner, S.FAILED, f"could not start the job's process ({e})", True)
            return
        if attempt.placed:  # a local process, placed as it started (a Ray task says so in its event log)
            self.store.placed(job["id"], self.owner, {"backend": self.backend.name, "node": attempt.node,
                                                      "devices": placement.devices, "pid": attempt.pid})
        self.children[job["id"]] = Child(job["id"], attempt, list(placement.units), log, read)

    def inside_runs(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.settings.runs.resolve())

    def read_child_events(self, child: Child) -> None:
        child.read, kinds = self.read_events(child.job_id, child.log, child.read)
        if "placed" in kinds:
            child.attempt.placed = True

    def read_events(self, job_id: int, log: Path, read: int) -> tuple[int, set[str]]:
        """Store the whole lines of a job's event log after byte `read`: (how far it is read now, their kinds)."""
        try:
            with open(log, "rb") as f:
                f.seek(read)
                chunk = f.read()
        except FileNotFoundError:
            return read, set()
        end = chunk.rfind(b"\n")
        if end < 0:
            return read, set()  # no whole line yet
        items = []
        for line in chunk[: end + 1].splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short
            if isinstance(item, dict) and isinstance(item.get("kind"), str):
                items.append(item)
        kinds = {item["kind"] for item in items}
        self.store.add_events(job_id, items, read + end + 1)
        return read + end + 1, kinds

    def ended(self, child: Child, end: Exit) -> None:
        """The attempt's process exited: the job's new state from its exit code, its stop request, its files."""
        del self.children[child.job_id]
        child.attempt.close()
        self.read_child_events(child)
        job = self.store.job(child.job_id)
        if job is None:
            return
        state, error, failed = outcome(job, end, job_folder(self.settings, job["id"]) / OUTPUT_FILE)
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
                child.attempt.stop()
                child.stop_sent = time.time()
            elif child.stop_sent is not None and time.time() - child.stop_sent > STOP_GRACE:
                child.attempt.kill()

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
            child.attempt.kill()
            child.attempt.wait()
            child.attempt.close()

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
            child.attempt.stop()
        deadline, killed = time.time() + STOP_GRACE, set()
        while self.children:
            for child in list(self.children.values()):
                self.read_child_events(child)
                if (end := child.attempt.poll()) is not None:
                    self.ended(child, end)
                elif time.time() > deadline and child.job_id not in killed:
                    child.attempt.kill()
                    killed.add(child.job_id)
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


def outcome(job: dict, end: Exit | int, output: Path) -> tuple[str, str | None, bool]:
    """(state, error line, whether it counts as a failure) of an attempt that ended as `end` (an Exit, or the
    process's exit code)."""
    end = end if isinstance(end, Exit) else Exit(end)
    finished = job["command"] == "fit" and job["run_dir"] and (Path(job["run_dir"]) / rundir.SUMMARY).is_file()
    code = end.code
    if end.lost is not None:  # the backend lost the process: continued from the checkpoint, unless stopped anyway
        if finished:
            return S.SUCCEEDED, None, False
        if job["stop"] == "cancel":
            return S.CANCELLED, None, False
        if job["stop"] == "shutdown":
            return S.INTERRUPTED, None, False
        return S.QUEUED, end.lost, end.counts
    if code is None:  # stopped on request and its exit code not reported (Ray's cancel)
        code = 0 if finished else -signal.SIGTERM
    if code == 0:
        if job["command"] == "fit" and not finished:
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
