"""Benchmark `trainer service`: what running a job through the service costs next to `trainer fit`, how late its
live events arrive, and how its API answers on a store of many jobs.

    python scripts/bench_service.py                       # all three sections: 7 trainings (a warm-up, 3 pairs)
    python scripts/bench_service.py --quick               # a smoke run: 1 pair, no warm-up, 1,000 jobs, 50 requests
    python scripts/bench_service.py --skip-train          # only the store section
    python scripts/bench_service.py --json-out bench.json # the figures also as JSON

1. Service overhead: the same job (recipe mnist_sample from --archive, extracted into a temporary data root;
   --no-pretrained, resnet18, 1 epoch, --no-interpret) as `python -m trainer fit` in a subprocess (wall: start
   to exit) and through a real `trainer service --devices cpu` (wall: POST /jobs to the job's `succeeded`
   state on its event stream), alternating, --repeats times, after one untimed warm-up fit that builds the
   data root's caches (both then read them: TRAINER_DATA is the same). Reported: each wall, the median
   ratio service/fit (target <= 1.10) and submit-to-first-batch (POST to the first `batch` event); beside
   them, to read the walls by, each run's epoch seconds, the training process's CPU seconds, the service's
   own CPU seconds and the load averages around it (a busy machine stretches all of them).
2. Event latency, from the service runs of section 1: for each `epoch` and each `batch` event, its arrival
   at this client minus its own `at` (when the training process published it; one machine, one clock):
   p50, p95, max (target p95 < 1 s).
3. Store scale: a store of --jobs finished jobs (a few events each), written directly with
   trainer.service.store.Store, served by a real `trainer service --db sqlite:///...`; --requests requests
   each of three endpoints from one keep-alive client: p50, p95 (target p95 < 100 ms).

Every process it starts is stopped (a service with SIGINT: its running job checkpoints and stops) and every
temporary folder removed, also on an error, Ctrl-C or SIGTERM. A benchmark, not a test: the figures depend on
the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from anywhere: the trainer next to this script

from trainer.options import as_args  # noqa: E402  (light: no torch)
from trainer.service import store as S  # noqa: E402
from trainer.service.auth import owner_of  # noqa: E402
from trainer.service.client import parse_stream  # noqa: E402
from trainer.training.events import EVENT_LOG  # noqa: E402

READY_TIMEOUT = 180.0  # seconds a service has to print its ready: line
STOP_TIMEOUT = 150.0  # seconds a service has to stop (its running job checkpoints first: up to 120 s)


class Failed(SystemExit):
    pass


class Stopped(BaseException):
    """SIGTERM or SIGINT to the benchmark: it unwinds, so every process it started is stopped."""


# --- the machine ------------------------------------------------------------------------------------------

def machine() -> dict:
    """The CPU as /proc/cpuinfo names it, its cores, its bf16 flags, torch's version (read without importing it)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "torch": torch, "python": platform.python_version()}


def machine_line(m: dict) -> str:
    bf16 = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if m[f]) or "none"
    return f"machine: {m['cpu']}, {m['cores']} cores, bf16 flags: {bf16}; torch {m['torch']}, python {m['python']}"


# --- figures ----------------------------------------------------------------------------------------------

def percentiles(values: list[float], scale: float = 1.0, digits: int = 3) -> dict:
    """p50, p95 (bench_serve's rule: the value at index int(0.95 n)), max and count."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {"count": len(ordered), "p50": round(scale * statistics.median(ordered), digits),
            "p95": round(scale * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], digits),
            "max": round(scale * ordered[-1], digits)}


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# --- processes --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have ended, their own children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of process `pid` itself, of its children it has waited for) from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def epoch_seconds(events: list[dict]) -> float | None:
    """The training's own time: its epoch rows' seconds, summed (no start-up, no export)."""
    seconds = [e["row"].get("seconds") for e in events if e.get("kind") == "epoch" and isinstance(e.get("row"), dict)]
    return round(sum(seconds), 2) if seconds and None not in seconds else None


def child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **extra}
    return env


def stop_process(popen: subprocess.Popen, timeout: float, signum: int = signal.SIGTERM) -> bool:
    """`signum`, then SIGKILL if it has not exited within `timeout`; whether it stopped by itself."""
    if popen.poll() is None:
        try:
            popen.send_signal(signum)
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            return False
    return True


class Service:
    """A real `trainer service` process on a free port, with a known token; a context manager that stops it
    (and then any job process it leaves behind) however the block ends."""

    def __init__(self, root: Path, data_root: Path, db: str | None = None):
        self.root, self.data_root = root, data_root
        self.state, self.runs = root / "state", root / "runs"
        self.db = db or f"sqlite:///{(self.state / 'jobs.db').resolve()}"
        self.token = secrets.token_urlsafe(24)  # >= 16 characters
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.ready = threading.Event()
        self.popen: subprocess.Popen | None = None
        self.ready_s: float | None = None
        self.stop_s: float | None = None

    def __enter__(self) -> Service:
        command = [sys.executable, "-m", "trainer", "service", "--host", "127.0.0.1", "--port", str(self.port),
                   "--devices", "cpu", "--state", str(self.state), "--runs", str(self.runs),
                   "--data-root", str(self.data_root), "--db", self.db]
        start = time.perf_counter()
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=child_env(TRAINER_TOKEN=self.token),
                                      start_new_session=True)  # Ctrl-C reaches the benchmark, which stops it
        threading.Thread(target=self.drain, daemon=True).start()
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not self.ready.wait(0.1):
                if self.popen.poll() is not None:
                    raise Failed(f"trainer service exited ({self.popen.returncode}) before it was ready:\n"
                                 + self.tail())
                if time.monotonic() > deadline:
                    raise Failed(f"trainer service printed no ready: line in {READY_TIMEOUT:.0f} s:\n" + self.tail())
            self.ready_s = time.perf_counter() - start
        except BaseException:
            self.__exit__()
            raise
        return self

    def drain(self) -> None:
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if line.startswith("ready:"):
                self.ready.set()

    def tail(self, n: int = 30) -> str:
        return "\n".join(f"  | {line}" for line in list(self.lines)[-n:])

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout)

    def __exit__(self, *_exc) -> None:
        if self.popen is None:
            return
        start = time.perf_counter()
        # SIGINT, as Ctrl-C: its running job checkpoints and ends interrupted. (Not SIGTERM: with uvicorn 0.29 and
        # later, the service then dies of the SIGTERM uvicorn raises again after its own shutdown, before the
        # runner's; its job stops only through PR_SET_PDEATHSIG, and the store still calls it running.)
        clean = stop_process(self.popen, STOP_TIMEOUT, signal.SIGINT)
        left = self.kill_left_jobs()
        self.stop_s = round(time.perf_counter() - start, 2)
        if not clean or left or self.popen.returncode != 0:
            how = f"stopped with exit code {self.popen.returncode}" if clean else \
                f"killed: it had not stopped {STOP_TIMEOUT:.0f} s after SIGINT"
            extra = f"; killed the job process(es) it left: {', '.join(map(str, left))}" if left else ""
            print(f"warning: trainer service {how}{extra}\n{self.tail(10)}", file=sys.stderr, flush=True)

    def kill_left_jobs(self) -> list[int]:
        """Job processes a service that did not stop cleanly may leave: by the pids its store still records."""
        path = S.sqlite_path(self.db)
        if path is not None and not path.is_file():
            return []
        try:
            store = S.Store(self.db)
            with store.engine.connect() as db:
                pids = [r[0] for r in db.execute(S.select(S.jobs.c.pid).where(S.jobs.c.pid.is_not(None)))]
            store.engine.dispose()
        except Exception:  # noqa: BLE001 - cleanup goes on
            return []
        from trainer.service.runner import pid_is_trainer

        killed, deadline = [], time.monotonic() + 30  # told to stop by PR_SET_PDEATHSIG: time to checkpoint
        for pid in pids:
            while pid_is_trainer(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_is_trainer(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)  # its own session: it and its workers
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        return killed


# --- section 1 and 2: training ----------------------------------------------------------------------------

def job_options(args) -> dict:
    """The options of both runs, by their CLI names (as a submission names them)."""
    return {"arch": args.arch, "pretrained": False, "epochs": args.epochs, "bs": args.bs, "interpret": False}


def extract(archive: Path, into: Path, folder: str) -> Path:
    if not archive.is_file():
        raise Failed(f"--archive {archive}: no such file; give the path of {folder}.tgz")
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(into)
    found = into / folder
    if not found.is_dir():
        raise Failed(f"--archive {archive} has no {folder}/ folder at its top")
    return found.resolve()


def read_events(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def run_fit(args, data: Path, data_root: Path, out: Path, timeout: float) -> dict:
    """`python -m trainer fit` in a subprocess: wall from start to exit, and when its first batch was
    published (it writes the same event log a service job writes, so both do the same work)."""
    out.mkdir(parents=True)
    log, events = out / "output.log", out / "events.jsonl"
    command = [sys.executable, "-m", "trainer", "fit", args.recipe, *as_args(job_options(args)),
               "--data", str(data), "--out", str(out / "runs")]
    env = child_env(TRAINER_DATA=str(data_root), CUDA_VISIBLE_DEVICES="", **{EVENT_LOG: str(events)})
    env.pop("TRAINER_TOKEN", None)
    with open(log, "wb") as output:
        cpu = children_cpu()
        wall_start, start = time.time(), time.perf_counter()
        popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_process(popen, 30)
        wall = time.perf_counter() - start
        cpu = children_cpu() - cpu
    if code != 0:
        tail = "\n".join(f"  | {line}" for line in log.read_text(errors="replace").splitlines()[-20:])
        raise Failed(f"trainer fit {'ran past ' + str(int(timeout)) + ' s' if code is None else 'exited ' + str(code)}"
                     f": {' '.join(command[3:])}\n{tail}")
    published = read_events(events)
    batches = [e for e in published if e.get("kind") == "batch"]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "first_batch_s": round(batches[0]["at"] - wall_start, 2) if batches else None,
            "epochs_s": epoch_seconds(published), "cpu_s": round(cpu, 1)}


def lines_until(stream: httpx.Response, deadline: float, job_id: int):
    """The stream's lines as bytes (keep-alive comments too, every 15 s), until `deadline` (perf_counter)."""
    for line in stream.iter_lines():
        if time.perf_counter() > deadline:
            raise Failed(f"job {job_id} had not ended within --timeout; it is stopped with the service")
        yield line.encode()


def run_job(args, service: Service, timeout: float) -> dict:
    """One job through the service: POST /jobs, then its SSE stream until it ends. Every event with its
    arrival time (wall clock, to compare with the event's own `at`)."""
    body = {"recipe": args.recipe, "command": "fit", "options": job_options(args), "data": args.recipe_folder}
    arrivals, state, first_batch, running = [], None, None, None
    with service.client(timeout=httpx.Timeout(60.0, read=60.0)) as api:  # keep-alives every 15 s
        server_cpu, job_cpu = process_cpu(service.popen.pid)
        client_cpu = own_cpu()
        start = time.perf_counter()
        answer = api.post("/jobs", json=body)
        if answer.status_code != 201:
            raise Failed(f"POST /jobs: {answer.status_code} {answer.text[:300]}")
        job_id = answer.json()["id"]
        deadline = start + timeout
        with api.stream("GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}) as stream:
            if stream.status_code != 200:
                raise Failed(f"GET /jobs/{job_id}/events: {stream.status_code} {stream.read()[:300]!r}")
            for item in parse_stream(lines_until(stream, deadline, job_id)):
                now, arrived = time.perf_counter(), time.time()
                arrivals.append((item, arrived))
                if item["kind"] == "batch" and first_batch is None:
                    first_batch = now - start
                if item["kind"] == "state":
                    state = item["state"]
                    if state == S.RUNNING and running is None:
                        running = now - start
                    if state in S.ENDED:  # the service has reaped the job's process: its CPU time is counted
                        wall = now - start
                        server_cpu, job_cpu = (after - before for after, before in
                                               zip(process_cpu(service.popen.pid), (server_cpu, job_cpu)))
                        client_cpu = own_cpu() - client_cpu
                        break
        if state != S.SUCCEEDED:
            log = api.get(f"/jobs/{job_id}/log").text
            tail = "\n".join(f"  | {line}" for line in log.splitlines()[-20:])
            job = api.get(f"/jobs/{job_id}").json()
            raise Failed(f"job {job_id} ended {state or 'not (its stream ended first)'}"
                         f"{': ' + job['error'] if job.get('error') else ''}\n{tail}")
        job = api.get(f"/jobs/{job_id}").json()
        api.delete(f"/jobs/{job_id}")  # its run directory too: the disk stays small
    latency = {kind: [arrived - item["at"] for item, arrived in arrivals if item["kind"] == kind]
               for kind in ("epoch", "batch")}
    return {"job": job_id, "wall_s": round(wall, 2), "first_batch_s": round(first_batch, 2) if first_batch else None,
            "running_s": round(running, 2) if running else None, "events": len(arrivals),
            "process_s": round(job["ended_at"] - job["started_at"], 2) if job.get("ended_at") else None,
            "epochs_s": epoch_seconds([item for item, _ in arrivals]), "cpu_s": round(job_cpu, 1),
            "service_cpu_s": round(server_cpu, 1), "client_cpu_s": round(client_cpu, 1), "latency": latency}


def training_sections(args, tmp: Path, results: dict) -> None:
    data_root = tmp / "data"
    data_root.mkdir()
    print(f"data: {args.archive} extracted into {data_root}", flush=True)
    data = extract(args.archive, data_root, args.recipe_folder)
    options = " ".join(as_args(job_options(args)))
    print(f"job: {args.recipe} {options} --data {data} (on the CPU)", flush=True)
    runs = []
    results["overhead"] = {"recipe": args.recipe, "options": job_options(args), "repeats": args.repeats,
                           "warmup": [], "runs": runs}
    if not args.warmup:
        print("no warm-up fit: the first fit builds the data root's caches (its wall includes that)", flush=True)
    for i in range(args.warmup):
        warm = run_fit(args, data, data_root, tmp / f"fit-warmup-{i}", args.timeout)
        results["overhead"]["warmup"].append(warm)
        print(f"warm-up fit (builds the data root's caches, not counted): {warm['wall_s']} s", flush=True)
    with Service(tmp / "service", data_root) as service:
        print(f"service ready in {service.ready_s:.1f} s at {service.url}", flush=True)
        results["overhead"]["service_ready_s"] = round(service.ready_s, 2)
        print("seconds; fit: start to exit; service: POST /jobs to `succeeded` on its stream; epochs: the epoch rows'\n"
              "seconds; cpu: the training process's CPU seconds (svc: the service's own); 1st batch: from the start\n"
              "(or POST) to the first batch event; load: 1-minute load averages before, between and after")
        print(f"{'rep':>3} {'fit':>7} {'service':>7} {'ratio':>6} {'epochs fit':>10} {'svc':>7} {'cpu fit':>7} "
              f"{'job':>7} {'svc':>5} {'1st batch fit':>13} {'svc':>5}  load")
        for rep in range(1, args.repeats + 1):
            load = [round(os.getloadavg()[0], 2)]  # what else ran: one-minute load averages around each run
            fit = run_fit(args, data, data_root, tmp / f"fit-{rep}", args.timeout)
            load.append(round(os.getloadavg()[0], 2))
            job = run_job(args, service, args.timeout)
            load.append(round(os.getloadavg()[0], 2))
            ratio = job["wall_s"] / fit["wall_s"]
            runs.append({"rep": rep, "fit": fit, "service": {k: v for k, v in job.items() if k != "latency"},
                         "ratio": round(ratio, 3), "load_1min": load, "latency": job["latency"]})
            print(f"{rep:>3} {fit['wall_s']:>7} {job['wall_s']:>7} {ratio:>6.3f} {fit['epochs_s']!s:>10} "
                  f"{job['epochs_s']!s:>7} {fit['cpu_s']:>7} {job['cpu_s']:>7} {job['service_cpu_s']:>5} "
                  f"{fit['first_batch_s']!s:>13} {job['first_batch_s']!s:>5}  {'/'.join(map(str, load))}", flush=True)
    ratio = statistics.median(r["ratio"] for r in runs)
    first = [r["service"]["first_batch_s"] for r in runs if r["service"]["first_batch_s"] is not None]
    summary = {"fit_wall_s": [r["fit"]["wall_s"] for r in runs],
               "service_wall_s": [r["service"]["wall_s"] for r in runs],
               "median_ratio": round(ratio, 3), "target_ratio": 1.10, "ratio_met": ratio <= 1.10,
               "submit_to_first_batch_s": percentiles(first, digits=2),
               "fit_start_to_first_batch_s": percentiles(
                   [r["fit"]["first_batch_s"] for r in runs if r["fit"]["first_batch_s"] is not None], digits=2)}
    for key, name in (("epochs_s", "epochs"), ("cpu_s", "cpu")):
        pairs = [r["service"][key] / r["fit"][key] for r in runs if r["service"][key] and r["fit"][key]]
        summary[f"median_{name}_ratio"] = round(statistics.median(pairs), 3) if pairs else None
    results["overhead"]["summary"] = summary
    print(f"median ratio service/fit: {ratio:.3f} (target <= 1.10: {verdict(ratio <= 1.10)}); "
          f"submit to first batch: median {summary['submit_to_first_batch_s']['p50']} s "
          f"(fit's own start to first batch: {summary['fit_start_to_first_batch_s']['p50']} s)", flush=True)
    print(f"median ratios service/fit of the epochs' own seconds: {summary['median_epochs_ratio']}, of the training "
          f"process's CPU seconds: {summary['median_cpu_ratio']} (all grow when other work shares the CPU: "
          f"compare runs with a like load)", flush=True)

    print("\n2. event latency (arrival on the SSE stream minus the event's `at`), over the service runs:")
    print(f"{'kind':>6} {'events':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    results["event_latency"] = {}
    for kind in ("epoch", "batch"):
        figures = percentiles([x for r in runs for x in r["latency"][kind]], scale=1000, digits=1)
        figures["target_p95_ms"], figures["met"] = 1000, figures["p95"] is not None and figures["p95"] < 1000
        results["event_latency"][kind] = figures
        print(f"{kind:>6} {figures['count']:>6} {figures['p50']!s:>8} {figures['p95']!s:>8} {figures['max']!s:>8}"
              f"  (target p95 < 1000 ms: {verdict(figures['met'])})", flush=True)
    for r in runs:
        r["latency"] = {kind: [round(x, 4) for x in values] for kind, values in r["latency"].items()}


# --- section 3: the store at scale ------------------------------------------------------------------------

def fill_store(url: str, n: int, owner: str, runs: Path) -> dict:
    """`n` finished jobs (90% succeeded, 5% failed, 5% cancelled), 4 events each, in one transaction."""
    rng = random.Random(0)
    store = S.Store(url)
    now = time.time() - n * 60
    job_rows, event_rows, states = [], [], collections.Counter()
    header = ["epoch", "phase", "train_loss", "valid_loss", "error_rate", "seconds"]  # as training writes it
    for i in range(1, n + 1):
        state = S.SUCCEEDED if i % 20 not in (7, 13) else S.FAILED if i % 20 == 7 else S.CANCELLED
        states[state] += 1
        created = now + i * 60
        started, ended = created + rng.uniform(0.2, 5), created + rng.uniform(40, 55)
        options = {"arch": "resnet18", "pretrained": False, "epochs": 1, "bs": 64, "interpret": False}
        job_rows.append(dict(id=i, state=state, command="fit", recipe="mnist_sample", options=S.dumps(options),
                             data=None, dataset=None, nproc=1, owner=owner,
                             run_dir=str(runs / "mnist_sample" / f"bench-{i}"), created_at=created, started_at=started,
                             ended_at=ended, attempts=1, failures=1 if state == S.FAILED else 0,
                             error="the job's process exited with code 1" if state == S.FAILED else None, stop=None,
                             lease_owner=None, lease_expires=None, pid=None, devices="cpu", events_read=0, last_seq=4))
        row = {"epoch": 1, "phase": "train", "train_loss": rng.uniform(0.01, 0.2), "valid_loss": rng.uniform(0.01, 0.2),
               "error_rate": rng.uniform(0.001, 0.01), "seconds": round(rng.uniform(35, 50), 2)}
        events = [("state", {"state": S.QUEUED}, created), ("state", {"state": S.RUNNING, "devices": "cpu"}, started),
                  ("epoch", {"row": row, "header": header, "epochs_total": 1}, ended - 1),
                  ("state", {"state": state}, ended)]
        event_rows += [dict(job_id=i, seq=seq, kind=kind, data=S.dumps(data), at=at)
                       for seq, (kind, data, at) in enumerate(events, 1)]
    start = time.perf_counter()
    with store.engine.begin() as db:
        db.execute(S.insert(S.jobs), job_rows)
        db.execute(S.insert(S.job_events), event_rows)
    took = time.perf_counter() - start
    store.engine.dispose()
    return {"jobs": n, "events": len(event_rows), "states": dict(states), "write_s": round(took, 2)}


def time_requests(api: httpx.Client, name: str, paths: list[str], check) -> dict:
    for path in paths[:5]:  # warm-up: the first requests pay one-time costs
        api.get(path)
    latencies = []
    for path in paths:
        start = time.perf_counter()
        answer = api.get(path)
        took = time.perf_counter() - start
        if answer.status_code != 200 or not check(answer.json()):
            raise Failed(f"GET {path}: {answer.status_code} {answer.text[:300]}")
        latencies.append(took)
    figures = percentiles(latencies, scale=1000, digits=1)
    figures.update(endpoint=name, target_p95_ms=100, met=figures["p95"] < 100)
    return figures


def store_section(args, tmp: Path, results: dict) -> None:
    root = tmp / "store"
    (root / "data").mkdir(parents=True)
    db = f"sqlite:///{(root / 'scale.db').resolve()}"
    service = Service(root, root / "data", db=db)
    filled = fill_store(db, args.jobs, owner_of(service.token), (root / "runs").resolve())
    print(f"\nstore: {filled['jobs']:,} finished jobs ({', '.join(f'{v:,} {k}' for k, v in filled['states'].items())}),"
          f" {filled['events']:,} events, written in {filled['write_s']} s", flush=True)
    rng = random.Random(1)
    n, offset = args.requests, min(5000, filled["states"][S.SUCCEEDED] - 50)  # a full page there
    endpoints = [
        ("GET /jobs?limit=50", ["/jobs?limit=50"] * n, lambda page: len(page["jobs"]) == 50),
        (f"GET /jobs?state=succeeded&limit=50&offset={offset}",
         [f"/jobs?state=succeeded&limit=50&offset={offset}"] * n, lambda page: len(page["jobs"]) == 50),
        ("GET /jobs/{random id}", [f"/jobs/{rng.randint(1, args.jobs)}" for _ in range(n)],
         lambda job: job["state"] in S.ENDED and job["last_epoch"] is not None),
    ]
    rows = []
    with service:
        print(f"service ready in {service.ready_s:.1f} s at {service.url} on {db}", flush=True)
        print(f"{'endpoint':<46} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        with service.client() as api:  # one keep-alive connection
            for name, paths, check in endpoints:
                row = time_requests(api, name, paths, check)
                rows.append(row)
                print(f"{name:<46} {row['count']:>8} {row['p50']:>8} {row['p95']:>8} {row['max']:>8}"
                      f"  (target p95 < 100 ms: {verdict(row['met'])})", flush=True)
    results["store"] = {**filled, "service_ready_s": round(service.ready_s, 2), "requests": n, "endpoints": rows}


# --- main -------------------------------------------------------------------------------------------------

def stopped(signum, _frame):
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)  # a second signal does not cut the clean-up short
    raise Stopped(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=REPO.parent / "shared" / "data" / "mnist_sample.tgz",
                        help="The dataset archive (fastai's layout, one folder at its top; default: "
                             "../shared/data/mnist_sample.tgz).")
    parser.add_argument("--recipe", default="mnist_sample", help="The recipe both runs train.")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--repeats", type=int, help="fit/service pairs [default: 3; --quick: 1].")
    parser.add_argument("--warmup", type=int,
                        help="Untimed fits first, to build the data root's caches [default: 1; --quick: 0].")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds one training may take.")
    parser.add_argument("--jobs", type=int, help="Finished jobs in the store [default: 10000; --quick: 1000].")
    parser.add_argument("--requests", type=int, help="Requests per endpoint [default: 200; --quick: 50].")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 1 fit/service pair, no warm-up, 1,000 jobs, 50 requests.")
    parser.add_argument("--skip-train", action="store_true", help="Only the store section.")
    parser.add_argument("--json-out", type=Path, help="Also write every figure here.")
    parser.add_argument("--tmp", type=Path, help="Where the temporary folder goes [default: the system's].")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = (0 if args.quick else 1) if args.warmup is None else args.warmup
    args.jobs = args.jobs or (1000 if args.quick else 10_000)
    args.requests = args.requests or (50 if args.quick else 200)
    if args.repeats < 1 or args.jobs < 100 or args.requests < 1 or args.warmup < 0:
        parser.error("--repeats and --requests must be at least 1, --jobs at least 100, --warmup at least 0")
    from trainer.recipes import get_recipe

    args.recipe_folder = get_recipe(args.recipe).folder

    info = machine()
    print(machine_line(info), flush=True)
    results = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-", dir=args.tmp))
    try:
        if not args.skip_train:
            print("\n1. service overhead: the same job as `trainer fit` and through `trainer service`", flush=True)
            training_sections(args, tmp, results)
        print("\n3. store scale", flush=True)
        store_section(args, tmp, results)
    except (KeyboardInterrupt, Stopped) as e:
        print(f"\nstopped by {e or type(e).__name__}; every process it started was stopped", file=sys.stderr,
              flush=True)
        return 130
    except Failed as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
