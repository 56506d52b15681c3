"""The service's Ray backend on a real Ray cluster (`ray start`: three nodes on this machine's loopback addresses):
jobs placed by Ray, a killed Ray worker and a lost node survived, a cancel passed on through Ray, the refusals at
start, and the environment a job gets on its node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import Process, Service, assert_same_training, free_port, metrics

from trainer.service.backends import Exit
from trainer.service.backends.ray_cluster import forwarded_environment, job_environment
from trainer.service.runner import outcome
from trainer.service import store as S

# Run alone, after the parallel part of `make test` (pyproject.toml's `serial` marker): a three-node Ray cluster
# on 2 cores, and its jobs' placement waits on Ray's own timeouts.
pytestmark = pytest.mark.serial

if os.environ.get("CI") != "true":  # CI installs the test extra, ray with it: there a missing ray fails loudly
    pytest.importorskip("ray", reason="the Ray backend's tests need the ray extra (pip install 'trainer[ray]')")

# digits, small: two epochs so that a job killed or cancelled after its first checkpoint has one left to resume
OPTIONS = {"arch": "resnet18", "pretrained": False, "epochs": 2, "bs": 64, "interpret": False}
HEAD, NODES = "127.0.0.2", ("127.0.0.3", "127.0.0.4")  # loopback addresses: three Ray nodes on this machine


class RayCluster:
    """A real Ray cluster started as an operator would, with `ray start` (in the background of a shell script:
    SIGINT ignored, and so in every Ray worker): a head with no CPUs and worker nodes of one CPU each, every
    node on its own loopback address, so a job runs on a node that can be lost without losing the head."""

    def __init__(self):
        self.port = free_port()
        self.address = f"{HEAD}:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
        self.nodes: dict[str, Process] = {}
        self.start(HEAD, 0, "--head", "--port", self.port, "--ray-client-server-port", free_port(),
                   "--include-dashboard=false", "--temp-dir", self.temp)

    def start(self, ip: str, cpus: int, *options) -> None:
        self.nodes[ip] = Process(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address", ip, "--num-cpus",
             cpus, "--object-store-memory", 80_000_000, "--disable-usage-stats",
             *(options or ("--address", self.address))],
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        self.nodes[ip].wait_for("Ray runtime started")

    def lose(self, ip: str) -> None:
        """The node at `ip` lost at once, as a machine that dies: its raylet, its workers, their jobs."""
        os.killpg(self.nodes[ip].popen.pid, signal.SIGKILL)
        self.nodes[ip].popen.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes.values()):  # the workers, then the head
            if node.popen.poll() is None:
                node.popen.send_signal(signal.SIGTERM)  # `ray start --block` stops every process it started
                try:
                    node.popen.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(node.popen.pid, signal.SIGKILL)
                    node.popen.wait()


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster()
    try:
        for ip in NODES:
            cluster.start(ip, 1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_service(ray_cluster, isolated):
    started = []

    def start(*options):
        started.append(Service(isolated, "--backend", "ray", "--ray-address", ray_cluster.address, "--data-root",
                               isolated / "datasets", *options))
        return started[-1]
    yield start
    for one in started:
        one.stop()


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def placements(svc: Service, job_id: int) -> list[dict]:
    """The `placed` events of a job that has ended."""
    return [e for e in svc.events(job_id) if e["kind"] == "placed"]


def states(svc: Service, job_id: int) -> list[str]:
    """The states of a job that has ended."""
    return [e["state"] for e in svc.events(job_id) if e["kind"] == "state"]


def test_jobs_run_on_ray_and_one_whose_worker_is_killed_continues_to_the_uninterrupted_result(ray_service):
    svc = ray_service()
    health = svc.http.get("/health").json()
    assert health["backend"] == "ray" and health["status"] == "ok", health
    plain, killed = (svc.submit("digits", options=OPTIONS)["id"] for _ in range(2))

    # the second job's Ray worker is killed once its first epoch is checkpointed
    first = svc.events(killed, until=lambda e: e["kind"] == "placed")[-1]
    svc.events(killed, first["id"], until=lambda e: e["kind"] == "checkpoint")
    assert first["backend"] == "ray" and first["node_ip"] in NODES and first["devices"] == "cpu", first
    worker = first["worker_pid"]
    assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::"), "not the Ray worker"
    os.kill(worker, signal.SIGKILL)

    # placed again: by then the first attempt's process is gone (it must not write the run directory beside the
    # attempt that resumes it)
    again = svc.events(killed, first["id"], until=lambda e: e["kind"] == "placed")[-1]
    assert again["kind"] == "placed" and not alive(first["pid"]), "the killed worker's job process lives on"

    done = {job_id: svc.wait_until_ended(job_id) for job_id in (plain, killed)}
    assert [d["state"] for d in done.values()] == ["succeeded", "succeeded"], done
    assert done[plain]["attempts"] == 1 and done[killed]["attempts"] == 2, done
    assert done[killed]["error"] == "the Ray worker running the job died (killed, or out of memory?)"
    assert states(svc, killed) == ["queued", "running", "queued", "running", "succeeded"]
    assert done[killed]["node"] == done[plain]["node"] == placements(svc, plain)[0]["node"]
    summary = json.loads((Path(done[killed]["run_dir"]) / "summary.json").read_text())
    assert summary.get("resumed_after_epoch") == 1, summary
    assert_same_training(done[killed]["run_dir"], done[plain]["run_dir"])
    assert (Path(done[killed]["run_dir"]) / "model.pkl").is_file()


def test_a_cancel_reaches_the_job_through_ray_and_resume_trains_every_epoch_once(ray_service):
    svc = ray_service()
    # two CPUs in the cluster, but a job's processes share one node, and no node has two
    too_big = svc.http.post("/jobs", json={"recipe": "digits", "options": OPTIONS, "nproc": 2})
    assert too_big.status_code == 422 and too_big.json()["error"] == (
        "the job asks for 2 devices (--nproc 2) but this service has 1 (Ray cluster: 3 nodes, 2 CPUs, 0 GPUs; CPU "
        "jobs): ask for at most 1, or add a node with more GPUs (or CPUs) to the Ray cluster"), too_big.text
    job = svc.submit("digits", options=OPTIONS)["id"]
    svc.events(job, until=lambda e: e["kind"] == "checkpoint")
    assert svc.http.post(f"/jobs/{job}/cancel").json()["state"] == "stopping"
    cancelled = svc.wait_until_ended(job)
    assert cancelled["state"] == "cancelled", cancelled
    assert len(metrics(cancelled["run_dir"])) == 1  # it stopped at the next batch, with epoch 1 saved
    log = svc.http.get(f"/jobs/{job}/log").text
    assert "interrupted: stopped by SIGTERM after epoch 1 of 2" in log, log

    assert svc.http.post(f"/jobs/{job}/resume").status_code == 200
    done = svc.wait_until_ended(job)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert [int(r["epoch"]) for r in metrics(done["run_dir"])] == [1, 2]
    assert json.loads((Path(done["run_dir"]) / "summary.json").read_text())["resumed_after_epoch"] == 1


def test_a_job_whose_node_is_lost_is_placed_on_another_and_continues_to_the_uninterrupted_result(ray_service,
                                                                                                  ray_cluster):
    svc = ray_service()
    plain, moved = (svc.submit("digits", options=OPTIONS)["id"] for _ in range(2))  # one on each node
    first = svc.events(moved, until=lambda e: e["kind"] == "placed")[-1]
    svc.events(moved, first["id"], until=lambda e: e["kind"] == "checkpoint")
    ray_cluster.lose(first["node_ip"])

    again = svc.events(moved, first["id"], until=lambda e: e["kind"] == "placed")[-1]
    assert again["kind"] == "placed" and again["node_ip"] != first["node_ip"], again
    assert not alive(first["pid"])
    done = {job_id: svc.wait_until_ended(job_id) for job_id in (plain, moved)}
    assert [d["state"] for d in done.values()] == ["succeeded", "succeeded"], done
    assert done[plain]["attempts"] == 1 and done[moved]["attempts"] == 2, done
    assert done[moved]["error"] == "the Ray node running the job died"
    assert states(svc, moved) == ["queued", "running", "queued", "running", "succeeded"]
    assert json.loads((Path(done[moved]["run_dir"]) / "summary.json").read_text())["resumed_after_epoch"] == 1
    assert_same_training(done[moved]["run_dir"], done[plain]["run_dir"])


@pytest.mark.parametrize("options, words", [
    (["--backend", "ray", "--slots", "2"], "--slots counts this machine's slots"),
    (["--backend", "ray", "--devices", "0"], "Ray picks each job's GPUs on its node"),
    (["--ray-address", "127.0.0.1:1"], "are for --backend ray"),
    (["--backend", "rya"], "did you mean 'ray'"),
    (["--backend", "ray", "--ray-address", "127.0.0.1:1"], "no Ray cluster answers there"),
])
def test_a_ray_service_that_cannot_start_says_why_in_one_line(options, words, isolated):
    done = subprocess.run([sys.executable, "-m", "trainer", "service", "--no-auth", "--port", str(free_port()),
                           "--state", isolated / "service", *options], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
    assert not (isolated / "service" / "jobs.db").exists()  # nothing was written


def test_a_job_on_a_ray_node_sees_only_the_gpus_ray_gave_it_and_never_the_token():
    node = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "OMP_NUM_THREADS": "4",
            "TRAINER_TOKEN": "secret-secret-secret"}
    service = {"TRAINER_OFFLINE": "1", "TRAINER_TOKEN": "secret-secret-secret", "TRAINER_DEVICE": "cuda:3",
               "FASTAI_HOME": "/shared/fastai", "HOME": "/root", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    extra = {**forwarded_environment(service), "TRAINER_EVENT_LOG": "/shared/state/jobs/1/events.jsonl"}
    assert set(extra) == {"TRAINER_OFFLINE", "FASTAI_HOME", "MLFLOW_TRACKING_URI", "TRAINER_EVENT_LOG"}
    gpu_job = job_environment(node, extra, ["2", "3"])  # Ray gave the task GPUs 2 and 3 of the node
    assert gpu_job["CUDA_VISIBLE_DEVICES"] == "2,3" and gpu_job["OMP_NUM_THREADS"] == "4"
    assert gpu_job["TRAINER_OFFLINE"] == "1" and gpu_job["PATH"] == "/usr/bin"
    cpu_job = job_environment(node, extra, [])  # a CPU job on a GPU node takes no GPU another task was given
    assert cpu_job["CUDA_VISIBLE_DEVICES"] == ""
    assert "TRAINER_TOKEN" not in gpu_job and "TRAINER_TOKEN" not in cpu_job


def job(**kw) -> dict:
    return {"command": "fit", "run_dir": None, "stop": None, **kw}


@pytest.mark.parametrize("row, end, state, counts", [
    (job(), Exit(None, "the Ray worker running the job died"), S.QUEUED, True),  # continued from its checkpoint
    (job(), Exit(None, "the Ray node running the job died", counts=False), S.QUEUED, False),  # not the job's fault
    (job(stop="cancel"), Exit(None, "the Ray worker running the job died"), S.CANCELLED, False),
    (job(stop="shutdown"), Exit(None), S.INTERRUPTED, False),  # Ray reported the cancel, not the exit code
    (job(stop="cancel"), Exit(-signal.SIGTERM), S.CANCELLED, False),
])
def test_how_an_attempt_that_ray_lost_or_stopped_ends(row, end, state, counts, tmp_path):
    got, error, failed = outcome(row, end, tmp_path / "output.log")
    assert (got, failed) == (state, counts)
    assert error == (end.lost if state == S.QUEUED else None)


def test_a_stopped_attempt_whose_run_had_finished_succeeded(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    assert outcome(job(run_dir=str(tmp_path), stop="shutdown"), Exit(None), tmp_path / "output.log")[0] == S.SUCCEEDED
