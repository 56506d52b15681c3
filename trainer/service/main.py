"""Starting the service: settings checked (one line, exit 2), the store opened, the runner started, then
uvicorn; on SIGTERM or Ctrl-C every running job checkpoints and stops, and the next start continues it."""

from __future__ import annotations

import shutil
import signal
import socket
import sys
from pathlib import Path

from trainer.errors import BadInput, did_you_mean, first_line
from trainer.extras import require

DEFAULT_PORT = 8100


def device_units(spec: str, slots: int | None, cuda_count: int) -> tuple[list[str], bool]:
    """The service's slots from --devices and --slots: (one entry per slot, whether they are GPUs).
    auto: every GPU there is, else the CPU; cpu: the CPU (--slots jobs at once, default 1); 0,1,...: those GPUs
    (--slots jobs on each, default 1)."""
    spec = (spec or "auto").strip().lower()
    if slots is not None and slots < 1:
        raise BadInput(f"--slots must be at least 1, got {slots}")
    if spec == "auto":
        spec = ",".join(str(i) for i in range(cuda_count)) if cuda_count else "cpu"
    if spec == "cpu":
        return ["cpu"] * (slots or 1), False
    indices = [part.strip() for part in spec.split(",")]
    if not all(i.isdigit() for i in indices) or len(set(indices)) != len(indices):
        raise BadInput(f"--devices must be auto, cpu or distinct GPU indices like 0,1, got '{spec}'")
    missing = [i for i in indices if int(i) >= cuda_count]
    if missing:
        raise BadInput(f"--devices {spec}: this machine has {cuda_count} CUDA GPU(s), no GPU {missing[0]}; "
                       f"use indices below {cuda_count}, or --devices cpu" if cuda_count else
                       f"--devices {spec}: this machine has no CUDA GPU; use --devices cpu")
    return [i for i in indices for _ in range(slots or 1)], True


def cuda_count() -> int:
    if shutil.which("nvidia-smi") is None:  # no driver: no need to import torch to know
        return 0
    import torch

    return torch.cuda.device_count()


BACKENDS = ("local", "ray")


def run_service(host: str, port: int, db: str | None, devices: str, slots: int | None, runs: Path,
                data_root: Path, state: Path, max_upload_mb: int, max_queued: int, no_auth: bool,
                backend: str = "local", ray_address: str | None = None, job_cpus: float = 1.0,
                job_memory_gb: float | None = None) -> None:
    require("service", "trainer service")
    from trainer.service import auth
    from trainer.service.runner import Runner, Settings
    from trainer.service.store import Store, shown

    auth.check_binding(host, not no_auth)
    if backend not in BACKENDS:
        raise BadInput(f"--backend {backend}: unknown{did_you_mean(backend, BACKENDS)}; use local (jobs on this "
                       f"machine) or ray (on a Ray cluster)")
    if backend != "ray" and (ray_address is not None or job_cpus != 1.0 or job_memory_gb is not None):
        raise BadInput("--ray-address, --job-cpus and --job-memory are for --backend ray; add it, or drop them")
    if backend == "ray":
        require("ray", "trainer service --backend ray")
        if slots is not None:
            raise BadInput("--slots counts this machine's slots; with --backend ray the cluster's free GPUs and CPUs "
                           "decide how many jobs run: drop --slots (size jobs with --job-cpus, --job-memory)")
        if devices.strip().lower() not in ("auto", "cpu"):
            raise BadInput(f"--devices {devices}: with --backend ray, Ray picks each job's GPUs on its node; use "
                           f"--devices auto (GPU jobs when the cluster has GPUs) or cpu")
        units, gpus = ["cpu"], False  # this machine runs only the requests' short tasks (predict, losses)
    else:
        units, gpus = device_units(devices, slots, cuda_count() if devices.strip().lower() != "cpu" else 0)
    for folder, flag in ((runs, "--runs"), (state, "--state")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"{flag} {folder}: cannot create it ({e.strerror}); choose a writable folder") from None
    try:
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart reuses the port
        probe.bind((host, port))
        probe.close()
    except OSError as e:
        raise BadInput(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    cluster = None
    if backend == "ray":  # joined before the store opens: a cluster that is not there leaves nothing behind
        import os

        from trainer.service.backends.ray_cluster import RayBackend

        cluster = RayBackend(data_root.resolve(), ray_address, devices.strip().lower() == "auto", job_cpus,
                             job_memory_gb, dict(os.environ))
    url = db or f"sqlite:///{(state / 'jobs.db').resolve()}"
    try:
        store = Store(url)
    except BadInput:
        raise  # its own line: a store of a newer trainer, a missing driver
    except Exception as e:
        raise BadInput(f"--db {shown(url)}: cannot open the job store ({type(e).__name__}: "
                       f"{first_line(e)}); check the URL and that the database is up") from None
    if store.migrated:
        print(f"store: {store.migrated}", flush=True)
    token = None
    if not no_auth:
        token, path, made = auth.service_token(state)
        if made:
            print(f"token: {token}  (new; saved in {path}, readable only by you: clients send it as "
                  f"TRAINER_TOKEN)", flush=True)
        else:
            print(f"token: in {path or 'TRAINER_TOKEN'}", flush=True)
    settings = Settings(runs=runs.resolve(), state=state.resolve(), data_root=data_root.resolve(), units=units,
                        gpus=gpus, max_upload=max_upload_mb * 2**20, max_queued=max_queued, cluster=cluster)
    runner = Runner(store, settings, cluster)

    import uvicorn

    from trainer.service.app import create_app

    app = create_app(store, runner, settings, token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    runner.start()

    def stop_requested(signum, _frame):  # uvicorn stops, then raises the signal again: end here, gracefully
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop_requested)
    print(f"ready: http://{host}:{port} ({settings.device_kind}; store {url.split(':', 1)[0]}; runs in {runs})",
          flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the checkpoints short
        print("stopping: running jobs checkpoint and stop; the next start continues them", file=sys.stderr,
              flush=True)
        runner.stop()
        runner.stopped.wait()
