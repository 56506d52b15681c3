"""The queue's rules without training: claims, leases, devices, how an attempt's exit becomes a state."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from trainer.errors import BadInput
from trainer.service import store as S
from trainer.service.main import device_units
from trainer.service.runner import Child, Runner, Settings, outcome


def new_jobs(store: S.Store, n: int, nproc: int = 1) -> list[int]:
    return [store.add_job("fit", "digits", {"epochs": 1}, None, None, nproc, "owner")["id"] for _ in range(n)]


def test_two_stores_racing_for_the_same_jobs_claim_each_exactly_once(store_url):
    stores = [S.Store(store_url), S.Store(store_url)]  # two services' engines on one database
    ids = new_jobs(stores[0], 40)
    won: dict[int, list[str]] = {i: [] for i in ids}

    def claim_all(store: S.Store, owner: str):
        for job_id in ids:
            if store.claim(job_id, owner, "cpu"):
                won[job_id].append(owner)
    racers = [threading.Thread(target=claim_all, args=(s, f"host:{k}:x")) for k, s in enumerate(stores) for _ in "ab"]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert all(len(owners) == 1 for owners in won.values()), won
    assert stores[1].count(S.RUNNING) == 40 and stores[1].count(S.QUEUED) == 0


def test_a_lease_whose_holder_died_or_ran_out_is_taken_back_and_a_live_one_is_not(store_url):
    store = S.Store(store_url)
    dead, expired, alive = new_jobs(store, 3)
    me = S.instance_id()
    host = me.split(":")[0]
    gone = f"{host}:{2**22 + 12345}:dead"  # a pid above pid_max: no such process
    store.claim(dead, gone, "cpu")
    store.claim(expired, "other-host:1:x", "cpu")
    store.claim(alive, me, "cpu")
    with store.engine.begin() as db:  # the other host stopped renewing a while ago
        db.execute(S.jobs.update().where(S.jobs.c.id == expired).values(lease_expires=time.time() - 1))
    assert sorted(j["id"] for j in store.orphans()) == [dead, expired]
    assert store.heartbeat([alive, dead], me) == {alive}  # a lease held by someone else is not renewed
    job = store.job(dead)
    assert store.take_back(job, S.QUEUED) and not store.take_back(job, S.QUEUED)  # once only
    assert store.job(dead)["state"] == S.QUEUED


def test_the_events_of_a_job_are_numbered_once_each_in_order(store_url):
    store = S.Store(store_url)
    (job_id,) = new_jobs(store, 1)
    store.add_events(job_id, [{"kind": "note", "at": 1.0, "text": "a"}, {"kind": "epoch", "row": {"loss": float("nan")}}],
                     read_to=10)
    events = store.events(job_id)
    assert [e["id"] for e in events] == [1, 2, 3] and [e["kind"] for e in events] == ["state", "note", "epoch"]
    assert events[2]["row"] == {"loss": None}  # JSON has no NaN: a diverged loss is null
    assert store.events(job_id, after=2) == events[2:] and store.job(job_id)["events_read"] == 10


@pytest.mark.parametrize("spec, slots, cuda, units, gpus", [
    ("auto", None, 0, ["cpu"], False),
    ("cpu", 3, 8, ["cpu"] * 3, False),
    ("auto", None, 2, ["0", "1"], True),
    ("0,1", 2, 4, ["0", "0", "1", "1"], True),
    ("2", None, 4, ["2"], True),
])
def test_devices_and_slots_become_the_service_slots(spec, slots, cuda, units, gpus):
    assert device_units(spec, slots, cuda) == (units, gpus)


@pytest.mark.parametrize("spec, cuda, words", [("3", 2, "no GPU 3"), ("0", 0, "no CUDA GPU"), ("0,0", 2, "distinct"),
                                               ("gpu", 2, "must be auto, cpu")])
def test_devices_that_do_not_exist_are_refused(spec, cuda, words):
    with pytest.raises(BadInput, match=words):
        device_units(spec, None, cuda)


def test_a_two_gpu_job_gets_two_different_gpus(tmp_path):
    settings = Settings(runs=tmp_path, state=tmp_path, data_root=tmp_path, units=["0", "0", "1", "1"], gpus=True)
    runner = Runner(S.Store(f"sqlite:///{tmp_path / 'jobs.db'}"), settings)
    placement = runner.backend.reserve({"nproc": 2}, [])
    assert sorted(settings.units[u] for u in placement.units) == ["0", "1"] and placement.devices in ("0,1", "1,0")
    assert runner.backend.reserve({"nproc": 3}, []) is None  # two GPUs: never three distinct ones
    assert settings.devices_total == 2
    running = [Child(1, None, [0], tmp_path / "events.jsonl", 0)]  # a one-GPU job on GPU 0
    (unit,) = runner.backend.reserve({"nproc": 1}, running).units
    assert settings.units[unit] == "1"  # the next job goes to the idle GPU, not to GPU 0's second slot


def job(**kw) -> dict:
    return {"command": "fit", "run_dir": None, "stop": None, **kw}


@pytest.mark.parametrize("row, code, state", [
    (job(stop="cancel"), 143, S.CANCELLED),
    (job(stop="cancel"), 1, S.CANCELLED),  # the user asked it to stop: not retried, whatever the exit
    (job(stop="shutdown"), 143, S.INTERRUPTED),
    (job(), -signal.SIGTERM, S.INTERRUPTED),
    (job(), 2, S.FAILED),  # bad input fails the same way every time: no second try
    (job(), -signal.SIGKILL, S.QUEUED),  # a crash: tried again from the checkpoint
    (job(), 1, S.QUEUED),
    (job(), 0, S.QUEUED),  # exit 0 without summary.json is not success
])
def test_how_an_attempt_ends(row, code, state, tmp_path):
    output = tmp_path / "output.log"
    output.write_text("epoch 1/2 ...\nerror: something broke\n")
    got, error, _ = outcome(row, code, output)
    assert got == state
    if code in (1, 2) and state != S.CANCELLED:
        assert error == "something broke"
    if code == -signal.SIGKILL:
        assert error == "the job's process was killed by SIGKILL (out of memory?)"


def test_finished_run_is_success(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    assert outcome(job(run_dir=str(tmp_path)), 0, Path("missing.log"))[0] == S.SUCCEEDED


def test_a_dataset_a_queued_running_or_interrupted_job_trains_on_is_not_deleted(store_url):
    store = S.Store(store_url)
    store.add_dataset(id="abc", name="a.zip", recipe="folder", path="/d", classes={"a": 1, "b": 1}, images=2,
                      bytes=10, sha256="0" * 64, owner="o")
    job = store.add_job("fit", "folder", {}, "/d", "abc", 1, "o")
    assert not store.delete_dataset("abc")  # queued
    store.claim(job["id"], "host:1:x", "cpu")
    assert not store.delete_dataset("abc")  # running
    assert store.take_back(store.job(job["id"]), S.INTERRUPTED)
    assert not store.delete_dataset("abc")  # interrupted: it continues by itself at the next start
    store.requeue(job["id"])
    assert store.request_stop(job["id"], "cancel")["state"] == S.CANCELLED
    assert store.delete_dataset("abc") and store.dataset("abc") is None  # ended: the user's to delete
