"""The service with real processes: a `trainer service` on a free port, real HTTP, real (tiny) training jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import Service, assert_same_training, metrics, run_dir_of

# Every job here trains the same tiny run: 24 images, 3 batches an epoch, a few seconds.
OPTIONS = {"arch": "resnet18", "pretrained": False, "epochs": 6, "bs": 8, "interpret": False}
FLAGS = ["--arch", "resnet18", "--no-pretrained", "--epochs", "6", "--bs", "8", "--no-interpret"]


@pytest.fixture(scope="session")
def reference(fixtures, tmp_path_factory, trainer) -> Path:
    """The same run as `trainer fit` writes it, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    return run_dir_of(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FLAGS, "--out", out,
                              "--quiet"))


@pytest.fixture
def service(fixtures, isolated, store_url):
    """Starts services on this test's store (each test runs on SQLite and on PostgreSQL); stops them at the end."""
    started = []

    def start(*options, **kw):
        started.append(Service(isolated, "--data-root", fixtures, *options, db=store_url, **kw))
        return started[-1]
    yield start
    for one in started:
        one.stop()


def assert_resumed(run_dir) -> None:
    """Continued from its checkpoint (a fresh start would reach the same losses too: training is deterministic)."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary.get("resumed_after_epoch", 0) >= 1, summary


def test_three_jobs_on_one_slot_run_in_order_and_write_what_trainer_fit_writes(service, fixtures, reference, isolated):
    """...while an event stream that drops and reconnects with Last-Event-ID gets every event once, and 50
    concurrent reads are answered without disturbing the training."""
    svc = service()
    first = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    second = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    # the third through the CLI client, uploading the folder (zipped) as a dataset
    env = {**os.environ, "TRAINER_SERVER": svc.url, "TRAINER_TOKEN": svc.TOKEN}
    submitted = subprocess.run([sys.executable, "-m", "trainer", "submit", "mnist_sample", "--data",
                                fixtures / "mnist_sample", *FLAGS], capture_output=True, text=True, env=env)
    assert submitted.returncode == 0, submitted.stderr
    third = int(submitted.stdout.strip())
    assert "dataset " in submitted.stderr and "32 images in 2 classes" in submitted.stderr

    seen = svc.events(first["id"], until=lambda e: e["kind"] == "epoch")  # then the client goes away
    answers, failures = [], []

    def read(path):
        try:
            answers.append(svc.http.get(path).status_code)
        except Exception as e:  # noqa: BLE001 - the assertion below names it
            failures.append(repr(e))
    paths = [f"/jobs/{first['id']}", "/jobs", "/health", f"/jobs/{first['id']}/files", "/datasets"] * 10
    readers = [threading.Thread(target=read, args=(p,)) for p in paths]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert not failures and answers == [200] * 50, (failures, answers)
    rest = svc.events(first["id"], last_event_id=seen[-1]["id"])  # reconnected: from the last event it saw
    ids = [e["id"] for e in seen + rest]
    assert ids == list(range(1, ids[-1] + 1))  # every event, once, in order
    assert [e["id"] for e in svc.events(first["id"])] == ids  # and a replay from the start is the same
    kinds = [e["kind"] for e in seen + rest]
    assert kinds.count("epoch") == 6 and kinds.count("finished") == 1 and "batch" in kinds

    follow = subprocess.run([sys.executable, "-m", "trainer", "jobs", "follow", str(third)], capture_output=True,
                            text=True, env=env)
    assert follow.returncode == 0, follow.stderr
    assert "epoch 6/6" in follow.stdout  # the same live lines as a local `trainer fit`

    jobs = [svc.job(j) for j in (first["id"], second["id"], third)]
    assert [j["state"] for j in jobs] == ["succeeded"] * 3
    assert follow.stdout.strip().splitlines()[-1] == jobs[2]["run_dir"]
    for before, after in zip(jobs, jobs[1:]):  # one slot: each started after the one before it ended
        assert after["started_at"] >= before["ended_at"], (before, after)
    expected_files = sorted(p.name for p in reference.iterdir())
    for job in jobs:
        run_dir = Path(job["run_dir"])
        assert run_dir.parent == isolated / "runs" / "mnist_sample"
        assert sorted(p.name for p in run_dir.iterdir()) == expected_files
        assert_same_training(run_dir, reference)
        config, want = (json.loads((d / "config.json").read_text()) for d in (run_dir, reference))
        where = ("data", "out")  # where the data and the runs are differ; every other option is the same
        assert {k: v for k, v in config["options"].items() if k not in where} == \
            {k: v for k, v in want["options"].items() if k not in where}
        assert job["attempts"] == 1 and job["error"] is None
    # the files API hands out the run's files, and only those of the run-directory schema
    listed = svc.http.get(f"/jobs/{first['id']}/files").json()["files"]
    assert {"metrics.csv", "summary.json", "model.safetensors", "report.html"} <= {f["name"] for f in listed}
    assert svc.http.get(f"/jobs/{first['id']}/files/metrics.csv").content == \
        (Path(jobs[0]["run_dir"]) / "metrics.csv").read_bytes()
    assert svc.http.get(f"/jobs/{first['id']}/files/..%2Fconfig.json").status_code == 404
    assert svc.http.get(f"/jobs/{first['id']}/files/last.pth").status_code == 404
    listing = svc.http.get("/jobs", params={"state": "succeeded", "limit": 2}).json()
    assert listing["total"] == 3 and [j["id"] for j in listing["jobs"]] == [third, second["id"]]
    assert svc.http.get("/jobs", params={"limit": 2, "offset": 2}).json()["jobs"][0]["id"] == first["id"]
    # delete: the job, its events and its run directory
    assert svc.http.delete(f"/jobs/{first['id']}").status_code == 200
    assert not Path(jobs[0]["run_dir"]).exists() and svc.http.get(f"/jobs/{first['id']}").status_code == 404


def test_killing_the_service_and_its_job_mid_run_continues_to_the_uninterrupted_result(service, reference):
    svc = service()
    job = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    svc.events(job["id"], until=lambda e: e["kind"] == "checkpoint")  # epoch 1 is saved; epoch 2 is running
    pid = svc.job(job["id"])["pid"]
    svc.process.popen.kill()  # SIGKILL: no chance to stop anything
    os.killpg(pid, signal.SIGKILL)
    svc.process.popen.wait()
    svc.http.close()

    again = service()  # a new service on the same store continues the job from its last checkpoint
    done = again.wait_until_ended(job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert_same_training(done["run_dir"], reference)
    assert_resumed(done["run_dir"])
    states = [e["state"] for e in again.events(job["id"]) if e["kind"] == "state"]
    assert states == ["queued", "running", "queued", "running", "succeeded"], states


def test_cancel_then_resume_trains_every_epoch_once(service, reference):
    svc = service()
    job = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    svc.events(job["id"], until=lambda e: e["kind"] == "checkpoint")
    assert svc.http.post(f"/jobs/{job['id']}/cancel").json()["state"] == "stopping"
    cancelled = svc.wait_until_ended(job["id"])
    assert cancelled["state"] == "cancelled", cancelled
    done_before = len(metrics(cancelled["run_dir"]))
    assert 1 <= done_before < 6
    assert svc.http.post(f"/jobs/{job['id']}/cancel").status_code == 409  # already ended: one line, nothing changes
    assert svc.http.post(f"/jobs/{job['id']}/resume").json()["state"] in ("queued", "running")  # picked at once
    done = svc.wait_until_ended(job["id"])
    assert done["state"] == "succeeded" and done["run_dir"] == cancelled["run_dir"]
    assert_same_training(done["run_dir"], reference)
    assert_resumed(done["run_dir"])


def test_the_same_failure_twice_ends_the_job_failed_with_its_line(service):
    # every attempt is killed as it writes its first checkpoint (the test hook of trainer.files)
    svc = service(env={"TRAINER_TEST_KILL_AT": "last.pth:written:1"})
    job = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    done = svc.wait_until_ended(job["id"])
    assert done["state"] == "failed" and done["attempts"] == 2, done
    assert done["error"] == "the job's process was killed by SIGKILL (out of memory?)"
    log = svc.http.get(f"/jobs/{job['id']}/log").text
    assert log.count("$ trainer fit mnist_sample") == 2  # started afresh: it died before any checkpoint


def test_two_services_on_one_store_never_run_the_same_job(service, isolated):
    one = service()
    two = service(port=None)
    ids = [one.submit("mnist_sample", options={**OPTIONS, "epochs": 1}, data="mnist_sample")["id"] for _ in range(2)]
    done = [two.wait_until_ended(i) for i in ids]
    assert [d["state"] for d in done] == ["succeeded"] * 2
    assert all(d["attempts"] == 1 for d in done), done
    assert len({d["run_dir"] for d in done}) == 2
    for i in ids:
        running = [e for e in one.events(i) if e["kind"] == "state" and e["state"] == "running"]
        assert len(running) == 1


def test_stopping_the_service_checkpoints_its_jobs_and_the_next_start_continues_them(service, reference):
    svc = service()
    job = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
    svc.events(job["id"], until=lambda e: e["kind"] == "checkpoint")
    svc.process.popen.send_signal(signal.SIGTERM)  # as systemd or docker stop would
    output, _ = svc.process.finish()
    assert svc.process.popen.returncode == 0, output
    assert "stopping: running jobs checkpoint and stop" in output
    again = service()
    done = again.wait_until_ended(job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2
    states = [e["state"] for e in again.events(job["id"]) if e["kind"] == "state"]
    assert states[:5] == ["queued", "running", "interrupted", "queued", "running"], states
    assert_same_training(done["run_dir"], reference)
    assert_resumed(done["run_dir"])
