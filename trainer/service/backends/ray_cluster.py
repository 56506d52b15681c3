"""The Ray backend: each attempt of a job is a Ray task that asks for the job's GPUs (and CPUs, memory) and runs
the same `trainer fit` command on whichever node Ray picks.

The service keeps its own queue and records (Ray has no job queue, and its head forgets its jobs when it
restarts); Ray only places and runs the work. The runner hands Ray at most one job that Ray has not placed
yet, so the queue's order holds and an autoscaler still sees the demand.

Events travel through the shared directory, not through Ray. The task's process writes its event log into
STATE/jobs/<id>/ and the service reads it by byte offset, exactly as for a local job: what was written before a
worker or a node died is kept and stored once, and the run directory has to be on storage every node shares
anyway (a job placed again resumes from its checkpoint there). So --runs, --state and --data-root must be
the same paths on every node (NFS, a CephFS or EFS mount, a Kubernetes ReadWriteMany volume).

A stop is `ray.cancel`: Ray raises KeyboardInterrupt in the task, which sends SIGTERM to the job's process
group, so the run checkpoints and stops as a local job does. A worker that dies (killed, out of memory, its
node lost) takes the job's process with it (PR_SET_PDEATHSIG, SIGKILL: Ray may hand its GPUs to another task at
once, and the job may be placed again elsewhere, so it must not go on writing its run directory), and the
runner queues the job again: it continues from its last checkpoint, the exact resume.

This module is imported by the Ray workers (the task below): only the standard library at the top.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from trainer.errors import BadInput, first_line
from trainer.service.backends import Exit, Placement, signal_group
from trainer.service.backends.local import parent_death_signal
from trainer.training.events import EVENT_LOG

# The service's variables a job's process sees on any node, over the node's own environment: what trainer
# itself reads (TRAINER_OFFLINE, FASTAI_HOME, ...), so a job behaves as it would on the service's machine.
FORWARDED_PREFIXES = ("TRAINER_", "FASTAI_", "TORCH_HOME", "HF_", "MLFLOW_TRACKING_URI")
NOT_FORWARDED = ("TRAINER_TOKEN", "TRAINER_DEVICE")  # never the token; the device is the service's to give
POLL = 0.5  # seconds between the task's looks at its process (a cancel is seen between two)
JOIN_TIMEOUT = 60.0  # seconds: ray.init retries an unanswering cluster for ever; the service says so and exits


def forwarded_environment(service_env: dict) -> dict:
    """The service's variables that go with each job to whichever node runs it."""
    return {k: v for k, v in service_env.items() if k.startswith(FORWARDED_PREFIXES) and k not in NOT_FORWARDED}


def job_environment(node_env: dict, extra: dict, gpu_ids: list[str]) -> dict:
    """The environment of a job's process on a Ray node: the node's own (its PATH, its Python, the OMP_NUM_THREADS
    Ray set from the CPUs it gave), the service's variables and the job's over it; only the GPUs Ray gave the task
    (a CPU job sees none, so it never takes a GPU Ray gave another task on the same node); never a token."""
    env = {**node_env, **extra}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    env.pop("TRAINER_TOKEN", None)
    return env


def append_event(log: Path, event: dict) -> None:
    """One whole line appended in one write (O_APPEND): the job's own events go to the same file."""
    fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a killed attempt cut its last line short
        os.write(fd, (("\n" if cut else "") + json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def run_attempt(command: list[str], extra: dict, gpu_job: bool, event_log: str, output: str) -> int:
    """One attempt of a job, run by Ray on the node it chose: the job's `trainer` command with this node's
    Python; its exit code. Publishes a `placed` event (node, GPUs, pids) as the process starts. Whatever ends the
    task, the process does not outlive it."""
    import ray

    # Ray's cancel interrupts the main thread as SIGINT would, through the SIGINT handler; Ray's workers ignore
    # SIGINT when `ray start` ran in a script's background, so the task puts Python's own back while it runs
    try:
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (a threaded actor): Ray's cancel has no interrupt to send there
        ignored = None
    popen = None
    try:
        gpu_ids = [str(g) for g in ray.get_gpu_ids()] if gpu_job else []
        env = job_environment(dict(os.environ), extra, gpu_ids)
        command = [sys.executable, *command[1:]]  # the node's own Python, with trainer installed beside Ray
        with open(output, "ab") as out:
            out.write(f"$ trainer {' '.join(command[3:])}   (Ray node {socket.gethostname()})\n".encode())
            out.flush()
            popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=parent_death_signal(signal.SIGKILL))
        append_event(Path(event_log), {
            "kind": "placed", "at": time.time(), "backend": "ray", "node": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "devices": ",".join(gpu_ids) or "cpu", "pid": popen.pid, "worker_pid": os.getpid()})
        while True:
            try:
                return popen.wait(timeout=POLL)  # a timed wait: the interrupt lands between two looks
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:  # ray.cancel: the service stops the job; it checkpoints at its next batch and stops
        if popen is None:
            raise  # cancelled before its process started: nothing to stop
        signal_group(popen.pid, signal.SIGTERM)
        while True:
            try:
                return popen.wait()
            except KeyboardInterrupt:
                continue
    except BaseException:  # the task failed around a running process (its log unwritable...): it goes too
        if popen is not None and popen.poll() is None:
            signal_group(popen.pid, signal.SIGKILL)
            popen.wait()
        raise
    finally:
        if ignored is not None:
            signal.signal(signal.SIGINT, ignored)  # the worker runs other tasks after this one


def join_cluster(address: str | None) -> None:
    """ray.init, or BadInput (one line) for a cluster that is not there. An address's port is tried first (a
    closed one answers at once); a cluster that takes connections but never answers Ray ends the service after
    JOIN_TIMEOUT with the same kind of line, since ray.init itself would retry for ever."""
    import threading

    import ray

    shown = address or "auto"
    fix = "start one with `ray start --head`, or give its address (HOST:6379)"
    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as e:
            raise BadInput(f"--ray-address {shown}: no Ray cluster answers there ({e.strerror or e}); {fix}") \
                from None

    def give_up():
        from trainer.cli.app import report_error

        report_error(BadInput(f"--ray-address {shown}: the Ray cluster did not answer in {JOIN_TIMEOUT:.0f} s; {fix}"
                              f" (its head's --node-ip-address must be an address this machine reaches)"))
        os._exit(2)
    watchdog = threading.Timer(JOIN_TIMEOUT, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        ray.init(address=address, namespace="trainer", log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
    except Exception as e:  # ConnectionError, a version mismatch, a bad address...
        raise BadInput(f"--ray-address {shown}: cannot join the Ray cluster ({type(e).__name__}: {first_line(e)}); "
                       f"{fix}") from None
    finally:
        watchdog.cancel()


class RayAttempt:
    """An attempt as a Ray task. `placed` turns true when its `placed` event arrives (the runner reads it)."""

    def __init__(self, ref):
        self.ref = ref
        self.placed = False  # Ray holds it without having started its process
        self.stopped = False

    def poll(self) -> Exit | None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=0)
        return self._result() if ready else None

    def _result(self) -> Exit:
        import ray
        from ray import exceptions as rx

        try:
            return Exit(ray.get(self.ref))
        except rx.TaskCancelledError:  # ray.cancel reports the cancel, not the process's code
            return Exit(None)
        except rx.OutOfMemoryError:
            return Exit(None, "Ray's memory monitor killed the job's worker (out of memory?); give jobs more "
                              "--job-memory or fewer per node")
        except rx.NodeDiedError:
            return Exit(None, "the Ray node running the job died", counts=False)
        except rx.WorkerCrashedError:  # also our own kill() after a stop: the job's stop reason decides then
            return Exit(None, "the Ray worker running the job died (killed, or out of memory?)")
        except rx.RayTaskError as e:  # the task itself failed on its node: trainer missing there, a bad path...
            cause = str(e.cause if getattr(e, "cause", None) is not None else e).strip().splitlines()
            return Exit(None, f"Ray could not run the job on its node ({type(e.cause).__name__}: "
                              f"{cause[-1] if cause else ''}); every node needs trainer installed and the "
                              f"shared --runs, --state and --data-root")
        except rx.RayError as e:
            return Exit(None, f"Ray lost the job ({type(e).__name__}: {first_line(e)})")

    def stop(self) -> None:
        import ray

        if not self.stopped:
            self.stopped = True
            ray.cancel(self.ref)  # KeyboardInterrupt in the task: SIGTERM to the job; a task not placed yet: dropped

    def kill(self) -> None:
        import ray

        self.stopped = True
        ray.cancel(self.ref, force=True)  # the worker exits; its job's process dies with it (PR_SET_PDEATHSIG)

    def wait(self) -> Exit:
        import ray

        ray.wait([self.ref])
        return self._result()

    def close(self) -> None:
        pass


class RayBackend:
    """Jobs as Ray tasks on a Ray cluster (`ray.init(address)`: an address, or None for RAY_ADDRESS, else a cluster
    `ray start` left on this machine, else a new local one)."""

    name = "ray"

    def __init__(self, data_root: Path, address: str | None, want_gpus: bool, job_cpus: float,
                 job_memory_gb: float | None, service_env: dict):
        """`want_gpus`: GPU jobs if the cluster has GPUs (--devices auto), else CPU jobs (--devices cpu)."""
        import ray

        self.data_root = data_root
        join_cluster(address)
        self.address = address
        self.remote = ray.remote(max_retries=0)(run_attempt)  # retries are the runner's: from the checkpoint
        self.job_cpus, self.job_memory = job_cpus, job_memory_gb
        self.service_env = forwarded_environment(service_env)
        self.nodes: list[dict] = []
        self.refresh()
        self.gpus = want_gpus and any(n.get("GPU", 0) for n in self.nodes)

    def refresh(self) -> None:
        """The cluster's nodes now (an autoscaler adds and removes them): their resources."""
        import ray

        self.nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]

    @property
    def devices_total(self) -> int:
        """The most a job may ask for: a job's processes share one node, so the largest node's GPUs (or the CPU
        processes its CPUs hold)."""
        if self.gpus:
            return int(max((n.get("GPU", 0) for n in self.nodes), default=0))
        return int(max((n.get("CPU", 0) for n in self.nodes), default=0) // self.job_cpus)

    @property
    def device_kind(self) -> str:
        cpus = sum(n.get("CPU", 0) for n in self.nodes)
        gpus = sum(n.get("GPU", 0) for n in self.nodes)
        return (f"Ray cluster: {len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}, {cpus:g} CPUs, "
                f"{gpus:g} GPUs; {'GPU' if self.gpus else 'CPU'} jobs")

    def resources(self, nproc: int) -> dict:
        ask = {"num_cpus": self.job_cpus * nproc, "num_gpus": nproc if self.gpus else 0}
        if self.job_memory:
            ask["memory"] = int(self.job_memory * 2**30 * nproc)
        return ask

    def reserve(self, job: dict, running: list) -> Placement | None:
        """Ray's resources for `job`, unless Ray still holds an earlier job it has not placed: then it waits here
        (first come, first served), not in Ray's own queue."""
        if any(not child.attempt.placed for child in running):
            return None
        return Placement("ray", resources=self.resources(job["nproc"]))

    def launch(self, job: dict, placement: Placement, command: list[str], env: dict, output: Path) -> RayAttempt:
        extra = {**self.service_env, **env, "TRAINER_DATA": str(self.data_root), "PYTHONUNBUFFERED": "1"}
        ref = self.remote.options(name=f"trainer job {job['id']} attempt {job['attempts']}",
                                  **placement.resources).remote(command, extra, self.gpus, env[EVENT_LOG],
                                                                str(output))
        return RayAttempt(ref)

    def close(self) -> None:
        import ray

        ray.shutdown()
