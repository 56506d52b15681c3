"""Benchmark job placement: how long `trainer service` takes from a job's claim to its process running, with the
local backend and with the Ray backend (a real Ray cluster of one node started here with `ray start --head`).

    python scripts/bench_placement.py                  # 5 jobs per backend, one after another
    python scripts/bench_placement.py --jobs 10 --json-out placement.json
    python scripts/bench_placement.py --ray-address HOST:6379   # an existing cluster instead of a local head

For each job (digits, resnet18, --no-pretrained, 1 epoch, --no-interpret: offline, a few seconds), from its
event stream:
  claim->placed   the `running` state (the service claimed it) to the `placed` event (its process started:
                  Popen returned, locally; on Ray, the task ran on its node and started the same command);
  submit->placed  POST /jobs to `placed` (adds the runner's tick, at most 0.25 s);
  placed->first   `placed` to the process's first own event (its Python importing trainer: the same work on
                  both backends, shown to put placement in proportion).
Jobs run one at a time, so each is placed on an idle machine. The first Ray job may find Ray's worker pool
still starting: its figure is shown apart. A benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.service.client import parse_stream  # noqa: E402

HEAD_IP = "127.0.0.2"  # a loopback address Ray takes as the node's (it would swap 127.0.0.1 for the outward one)
OPTIONS = {"arch": "resnet18", "pretrained": False, "epochs": 1, "bs": 64, "interpret": False}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_line(popen: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    for line in popen.stdout:
        if text in line:
            return
        if time.time() > deadline:
            break
    raise RuntimeError(f"{popen.args[:5]} never printed '{text}'")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def start_head(temp: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             "--node-ip-address", HEAD_IP, "--port", str(port), "--ray-client-server-port",
                             str(free_port()), "--num-cpus", "2", "--include-dashboard=false",
                             "--disable-usage-stats", "--object-store-memory", "100000000", "--temp-dir", temp],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for_line(head, "Ray runtime started")
    return head, f"{HEAD_IP}:{port}"


def stop(popen: subprocess.Popen, timeout: float = 120) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


def measure(root: Path, backend: list[str], jobs: int) -> list[dict]:
    port = free_port()
    root.mkdir(parents=True)
    service = subprocess.Popen([sys.executable, "-m", "trainer", "service", "--no-auth", "--port", str(port),
                                "--devices", "cpu", "--state", root / "service", "--runs", root / "runs",
                                "--data-root", root / "datasets", *backend], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "TRAINER_OFFLINE": "1"})
    rows = []
    try:
        wait_for_line(service, "ready: http://")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as api:
            for _ in range(jobs):
                submitted = time.time()
                job = api.post("/jobs", json={"recipe": "digits", "options": OPTIONS}).raise_for_status().json()
                seen: dict[str, float] = {}
                with api.stream("GET", f"/jobs/{job['id']}/events") as response:
                    for event in parse_stream(line.encode() + b"\n" for line in response.iter_lines()):
                        if event["kind"] == "state" and event["state"] == "running":
                            seen.setdefault("running", event["at"])
                        elif event["kind"] == "placed":
                            seen.setdefault("placed", event["at"])
                        elif "placed" in seen and event["kind"] not in ("state", "placed"):
                            seen.setdefault("first", event["at"])
                        if event["kind"] == "state" and event["state"] in ("succeeded", "failed"):
                            seen["end"] = event["state"]
                if seen.get("end") != "succeeded":
                    raise RuntimeError(f"job {job['id']} ended {seen.get('end')}")
                rows.append({"claim_to_placed": seen["placed"] - seen["running"],
                             "submit_to_placed": seen["placed"] - submitted,
                             "placed_to_first_event": seen["first"] - seen["placed"]})
    finally:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(120)
        except subprocess.TimeoutExpired:
            service.kill()
    return rows


def summary(rows: list[dict]) -> dict:
    return {key: {"median_ms": round(1000 * statistics.median(r[key] for r in rows), 1),
                  "max_ms": round(1000 * max(r[key] for r in rows), 1)} for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5, help="Jobs per backend.")
    parser.add_argument("--ray-address", help="An existing Ray cluster [default: a head started here].")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head, address = (None, args.ray_address) if args.ray_address else start_head(temp)
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "jobs": args.jobs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = measure(Path(tmp) / "local", [], args.jobs)
            ray = measure(Path(tmp) / "ray", ["--backend", "ray", "--ray-address", address], args.jobs)
        results["local"], results["ray"] = summary(local), summary(ray[1:] or ray)
        results["ray_first_job"] = {k: round(1000 * v, 1) for k, v in ray[0].items()}
    finally:
        if head is not None:
            stop(head)
    print(f"{results['cpu']}, {results['cores']} cores; {args.jobs} digits jobs per backend, one at a time")
    for name in ("local", "ray"):
        print(f"  {name:5}  " + "  ".join(f"{k} median {v['median_ms']:.1f} ms (max {v['max_ms']:.1f})"
                                          for k, v in results[name].items()))
    print("  ray's first job: " + "  ".join(f"{k} {v:.1f} ms" for k, v in results["ray_first_job"].items()))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
