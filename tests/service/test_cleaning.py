"""Cleaning the data and training again, through a real `trainer service`: every image's loss, the run's images,
dataset versions (relabel, delete; the originals untouched) and a job again on a version. One service and one
tiny finished job for the whole module (on each kind of store); the upgrade of a store from before dataset versions
and the losses' bookkeeping without one."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import Service

OPTIONS = {"arch": "test_resnet", "pretrained": False, "epochs": 1, "bs": 8, "interpret": False}  # a tiny timm model
RELABELLED, DELETED = "train/3/0_0.png", "train/3/0_1.png"  # of the fixture's mnist_sample: 12+4 images of 3 and 7
CHANGES = [{"path": RELABELLED, "action": "relabel", "to": "7"}, {"path": DELETED, "action": "delete"}]


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def one_line(answer, status: int) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    return body["error"]


@pytest.fixture(scope="module")
def cleaning(fixtures, tmp_path_factory, module_store_url):
    """A service whose data root holds a copy of mnist_sample, and one fit job on it that succeeded; its losses
    are being computed from the start (they take as long as the job trained again on a version does)."""
    base = tmp_path_factory.mktemp("cleaning")
    data = base / "data"
    shutil.copytree(fixtures / "mnist_sample", data / "mnist_sample")
    env = {"TRAINER_OFFLINE": "1", "FASTAI_HOME": str(base / "fastai_home"), "TORCH_HOME": str(base / "torch_home")}
    svc = Service(base, "--data-root", data, env=env, db=module_store_url)
    try:
        job = svc.wait_until_ended(svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")["id"])
        assert job["state"] == "succeeded", svc.http.get(f"/jobs/{job['id']}/log").text
        started = svc.http.post(f"/jobs/{job['id']}/losses")
        yield SimpleNamespace(svc=svc, job=job, run_dir=Path(job["run_dir"]), data=data / "mnist_sample",
                              originals=digests(data / "mnist_sample"), started=started)
    finally:
        svc.stop()


def wait_for_losses(svc, job_id: int, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while True:
        answer = svc.http.get(f"/jobs/{job_id}/losses")
        assert answer.status_code == 200, answer.text
        if answer.json()["state"] != "computing" or time.time() > deadline:
            return answer.json()
        time.sleep(0.5)


def test_a_version_relabels_and_deletes_leaving_the_originals_and_a_job_trains_on_it_again(cleaning):
    svc, job = cleaning.svc, cleaning.job
    saved = svc.http.post(f"/jobs/{job['id']}/versions", json={"changes": CHANGES, "note": "two fixed"})
    assert saved.status_code == 201, saved.text
    version = saved.json()
    dataset = version["dataset"]
    assert {k: version[k] for k in ("version", "parent", "images", "classes", "changes", "class_changes", "note")} \
        == {"version": 2, "parent": 1, "images": 31, "classes": {"3": 14, "7": 17}, "changes": CHANGES,
            "class_changes": {"3": -2, "7": 1}, "note": "two fixed"}
    assert svc.http.get(f"/datasets/{dataset}/versions/2").json() == version
    listed = svc.http.get(f"/datasets/{dataset}/versions").json()["versions"]
    assert [(v["version"], v["parent"], v["images"], v["changes"]) for v in listed] == [(1, None, 32, 0), (2, 1, 31, 2)]
    assert svc.http.get(f"/datasets/{dataset}").json()["name"] == "mnist_sample"  # the folder, registered

    # the originals: every byte, where it was; the version: links to them, moved or left out
    assert digests(cleaning.data) == cleaning.originals
    folder = svc.state / "datasets" / dataset / ".versions" / "2"
    assert (folder / "train/7/0_0.png").stat().st_ino == (cleaning.data / RELABELLED).stat().st_ino
    assert not (folder / RELABELLED).exists() and not (folder / DELETED).exists()
    manifest = json.loads((folder / ".trainer-dataset.json").read_text())
    assert manifest == {"dataset": dataset, "name": "mnist_sample", "version": 2, "parent": 1, "changes": CHANGES}

    # its images and samples
    image = svc.http.get(f"/datasets/{dataset}/image", params={"path": "train/7/0_0.png", "version": 2})
    assert image.status_code == 200 and image.content == (cleaning.data / RELABELLED).read_bytes()
    for path, number in (("train/7/0_0.png", 1), (RELABELLED, 2), ("../2/train/7/1_0.png", 2),
                         (".trainer-dataset.json", 2), (str(folder / "train/7/1_0.png"), 2), ("labels.csv", 1)):
        one_line(svc.http.get(f"/datasets/{dataset}/image", params={"path": path, "version": number}), 404)
    picked = svc.http.get(f"/datasets/{dataset}/samples", params={"per_class": 3}).json()
    assert picked == svc.http.get(f"/datasets/{dataset}/samples", params={"per_class": 3, "version": 2}).json()
    assert sorted(picked) == ["3", "7"] and all(len(paths) == 3 for paths in picked.values())
    assert all(p.split("/")[-2] == label and (folder / p).is_file() for label, paths in picked.items() for p in paths)

    # train again on it: the same job, on version 2
    again = svc.http.post(f"/jobs/{job['id']}/again", json={})
    assert again.status_code == 201, again.text
    new = again.json()
    assert (new["dataset"], new["dataset_version"], new["recipe"], new["options"], new["command"], new["data"]) == \
        (dataset, 2, "mnist_sample", job["options"], "fit", None)
    # not finished yet (running, its run directory started): no losses, one line
    svc.events(new["id"], until=lambda e: e["kind"] == "run_started")
    for answer in (svc.http.post(f"/jobs/{new['id']}/losses"), svc.http.get(f"/jobs/{new['id']}/losses")):
        assert "losses are computed for a fit job that succeeded" in one_line(answer, 409)
    done = svc.wait_until_ended(new["id"])
    assert done["state"] == "succeeded" and done["dataset_version"] == 2, svc.http.get(f"/jobs/{new['id']}/log").text
    split = {path: (part, label) for part, path, label in read_csv(Path(done["run_dir"]) / "split.csv")[1:]}
    assert split["train/7/0_0.png"] == ("train", "7") and RELABELLED not in split and DELETED not in split
    assert len(split) == 31
    config = json.loads((Path(done["run_dir"]) / "config.json").read_text())
    assert config["data"]["version"] == {"dataset": dataset, "version": 2, "parent": 1, "changes": 2}
    assert Path(config["data"]["path"]) == folder.resolve()

    # a version of a version, through the dataset: the relabelled image back where it was
    third = svc.http.post(f"/datasets/{dataset}/versions",
                          json={"parent": 2, "changes": [{"path": "train/7/0_0.png", "action": "relabel", "to": "3"}]})
    assert third.status_code == 201, third.text
    assert (third.json()["version"], third.json()["parent"], third.json()["class_changes"]) == (3, 2, {"3": 1, "7": -1})
    assert (svc.state / "datasets" / dataset / ".versions" / "3" / RELABELLED).is_file()
    assert "has no version 9" in one_line(svc.http.post(f"/datasets/{dataset}/versions",
                                                        json={"parent": 9, "changes": CHANGES}), 422)


def test_losses_csv_holds_every_image_of_split_csv_highest_loss_first(cleaning):
    svc, job_id = cleaning.svc, cleaning.job["id"]
    assert cleaning.started.status_code == 200 and cleaning.started.json()["state"] in ("computing", "ready")
    assert svc.http.post(f"/jobs/{job_id}/losses").json()["state"] in ("computing", "ready")  # the same one
    answer = wait_for_losses(svc, job_id)
    assert answer["state"] == "ready" and answer["error"] is None, answer
    header, *rows = read_csv(cleaning.run_dir / "losses.csv")
    assert header == ["split", "path", "label", "predicted", "p_predicted", "loss"]
    assert sorted(tuple(r[:3]) for r in rows) == sorted(tuple(r) for r in read_csv(cleaning.run_dir / "split.csv")[1:])
    losses = [float(r[5]) for r in rows]
    assert losses == sorted(losses, reverse=True) and len(rows) == 32
    assert {r[0] for r in rows} == {"train", "valid"}

    assert answer["classes"] == ["3", "7"] and answer["total"] == 32
    assert answer["rows"][0] == dict(zip(header, [*rows[0][:4], float(rows[0][4]), float(rows[0][5])]))
    assert [r["path"] for r in answer["rows"]] == [r[1] for r in rows]
    some = svc.http.get(f"/jobs/{job_id}/losses", params={"split": "valid", "label": "7"}).json()
    assert some["total"] == 4 and [r["path"] for r in some["rows"]] == \
        [r[1] for r in rows if r[0] == "valid" and r[2] == "7"]
    page = svc.http.get(f"/jobs/{job_id}/losses", params={"limit": 5, "offset": 5}).json()
    assert page["total"] == 32 and page["rows"] == answer["rows"][5:10]
    assert svc.http.post(f"/jobs/{job_id}/losses").json() == {"state": "ready", "error": None}  # at once
    assert "split must be train or valid" in one_line(svc.http.get(f"/jobs/{job_id}/losses",
                                                                   params={"split": "test"}), 422)
    assert "not one of the run's classes" in one_line(svc.http.get(f"/jobs/{job_id}/losses",
                                                                   params={"label": "9"}), 422)


def test_the_job_image_endpoint_hands_out_the_run_images_only(cleaning):
    svc, job_id = cleaning.svc, cleaning.job["id"]
    _, path, _ = read_csv(cleaning.run_dir / "split.csv")[1]
    image = svc.http.get(f"/jobs/{job_id}/image", params={"path": path})
    assert image.status_code == 200 and image.content == (cleaning.data / path).read_bytes()
    assert image.headers["content-type"] == "image/png"
    for bad in (f"../mnist_sample/{path}", f"train/3/../../{path}", str(cleaning.data / path), "labels.csv",
                "../../service/token", "/etc/passwd", "train/3/nope.png", ""):
        one_line(svc.http.get(f"/jobs/{job_id}/image", params={"path": bad}), 404)
    one_line(svc.http.get("/jobs/999/image", params={"path": path}), 404)


def test_bad_changes_are_refused_with_one_line_and_leave_nothing(cleaning):
    svc, job_id = cleaning.svc, cleaning.job["id"]
    from trainer.service.versions import folder_id

    dataset = folder_id(cleaning.data)
    versions = svc.state / "datasets" / dataset / ".versions"
    before = sorted(p.name for p in versions.iterdir()) if versions.is_dir() else []
    datasets_before = svc.http.get("/datasets").json()["datasets"]
    every_train_7 = [{"path": f"train/7/1_{i}.png", "action": "delete"} for i in range(12)]
    for changes, says in (
            ([{"path": "train/3/0_2.png", "action": "relabel", "to": "9"}], "'to' must be one of the dataset's classes"),
            ([{"path": "train/3/nope.png", "action": "delete"}], "is not an image of"),
            ([{"path": "../mnist_sample/train/3/0_2.png", "action": "delete"}], "is not an image of"),
            ([{"path": "train/3/0_2.png", "action": "delete"}] * 2, "is changed twice"),
            ([{"path": "train/3/0_2.png", "action": "relabel", "to": "3"}], "labelled 3 already"),
            ([{"path": "train/3/0_2.png", "action": "rename"}], "action must be relabel or delete"),
            ([], "non-empty list"),
            (every_train_7, "would not fit recipe mnist_sample")):
        line = one_line(svc.http.post(f"/jobs/{job_id}/versions", json={"changes": changes}), 422)
        assert says in line, line
        assert (sorted(p.name for p in versions.iterdir()) if versions.is_dir() else []) == before
        assert svc.http.get("/datasets").json()["datasets"] == datasets_before
    assert digests(cleaning.data) == cleaning.originals
    one_line(svc.http.post("/datasets/0123456789abcdef/versions", json={"changes": CHANGES}), 404)
    one_line(svc.http.post(f"/jobs/{job_id}/versions", json={"changes": CHANGES, "parent": 1}), 422)


def test_a_store_from_before_dataset_versions_is_adopted_and_upgraded_in_place(tmp_path):
    """A store older still than the previous release (no jobs.dataset_version, no dataset_versions): its rows kept,
    what it lacks added as that release's own start did, then Alembic's revisions on top."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from helpers import earlier_store, sqlite_store_from
    from sqlalchemy import inspect

    from trainer.service import migrations
    from trainer.service import store as S

    url = sqlite_store_from(earlier_store("older-release"), tmp_path / "jobs.db")
    store = S.Store(url)
    assert store.migrated == f"a store of a release before migrations (jobs.dataset_version added), upgraded to " \
                             f"revision {migrations.head()}"
    assert {"dataset_versions", "alembic_version"} <= set(inspect(store.engine).get_table_names())
    with store.engine.connect() as db:
        assert compare_metadata(MigrationContext.configure(db), S.metadata) == []  # exactly store.py's schema
    assert [(j["id"], j["state"], j["dataset_version"]) for j in store.list_jobs()[0]] == \
        [(3, "queued", None), (2, "interrupted", None), (1, "succeeded", None)]  # the old rows kept
    assert [e["kind"] for e in store.events(1)] == ["state", "state", "run_started", "epoch", "finished", "state"]
    assert store.add_job("fit", "digits", {}, None, "abc", 1, "o", dataset_version=3)["dataset_version"] == 3
    dataset = store.dataset("0123456789abcdef")
    assert store.add_version(dataset["id"], 2, 1, [], "/x", {"cats": 1}, "o", None)["version"] == 2
    again = S.Store(url)
    assert again.migrated is None and again.job(4)["dataset_version"] == 3  # once only


def test_losses_are_computed_once_at_a_time_and_a_failure_is_kept(tmp_path):
    from trainer.service.losses import Losses
    from trainer.service.tasks import TaskFailed

    release, calls = threading.Event(), []

    def run(args, settings, timeout, device):
        calls.append((args, device))
        release.wait(30)
        if len(calls) == 1:
            (Path(args[1]) / "losses.csv").write_text("split,path,label,predicted,p_predicted,loss\n")
        else:
            raise TaskFailed("the run's data /x is gone; pass --data where it is now")

    losses = Losses(SimpleNamespace(), run=run)
    run_dir, other = tmp_path / "run", tmp_path / "other"
    run_dir.mkdir(), other.mkdir()
    assert losses.state(run_dir) == ("absent", None)
    assert losses.start(run_dir) == losses.start(run_dir) == ("computing", None)
    assert losses.state(run_dir) == ("computing", None)
    release.set()
    deadline = time.time() + 10
    while losses.state(run_dir)[0] == "computing" and time.time() < deadline:
        time.sleep(0.01)
    assert losses.state(run_dir) == ("ready", None) and losses.start(run_dir) == ("ready", None)
    assert calls == [(["interpret", str(run_dir), "--losses"], "cpu")]  # once
    losses.start(other)
    while losses.state(other)[0] == "computing" and time.time() < deadline:
        time.sleep(0.01)
    assert losses.state(other) == ("failed", "the run's data /x is gone; pass --data where it is now")
    assert len(calls) == 2
