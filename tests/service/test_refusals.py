"""Bad input to a real service: each a 4xx with one line, and nothing stored. No training here."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from helpers import Service, class_folders, free_port, one_line_error


@pytest.fixture(scope="module")
def svc(fixtures, tmp_path_factory, module_store_url):
    one = Service(tmp_path_factory.mktemp("refusals"), "--data-root", fixtures, "--max-upload-mb", "1",
                  db=module_store_url)
    yield one
    one.stop()


def zip_of(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def png(tmp: Path, label: int) -> bytes:
    class_folders(tmp, [str(label)], 1)
    return next((tmp / str(label)).iterdir()).read_bytes()


def symlink_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name in ("cats/a.png", "dogs/b.png"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"\x89PNG"))
        link = tarfile.TarInfo("dogs/c.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    return buffer.getvalue()


def refused(answer: httpx.Response, status: int, words: str) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    line = answer.json()["error"]
    assert isinstance(line, str) and "\n" not in line and words in line, line
    return line


def test_bad_input_is_one_line_4xx_and_nothing_is_stored(svc, tmp_path):
    good = {"recipe": "mnist_sample", "data": "mnist_sample", "options": {"epochs": 1}}
    post = svc.http.post
    refused(post("/jobs", json={**good, "recipe": "mnist_smaple"}), 422, "unknown recipe 'mnist_smaple'")
    # the CLI's own lines, from the same option definitions
    refused(post("/jobs", json={**good, "options": {"epochs": 0}}), 422, "--epochs must be a whole number of at least 1, got 0")
    refused(post("/jobs", json={**good, "options": {"epochs": "two"}}), 422, "--epochs must be a whole number")
    refused(post("/jobs", json={**good, "options": {"opt": "adamw"}}), 422, "--opt")
    refused(post("/jobs", json={**good, "options": {"lr": "fast"}}), 422, "--lr must be a number")
    refused(post("/jobs", json={**good, "options": {"epoch": 2}}), 422, "unknown option 'epoch'")
    refused(post("/jobs", json={**good, "options": {"data": "/etc"}}), 422, "cannot name a server path")
    refused(post("/jobs", json={**good, "data": "../../etc"}), 422, "not a folder under the service's data root")
    refused(post("/jobs", json={**good, "data": "nowhere"}), 422, "no folder 'nowhere'")
    refused(post("/jobs", json={**good, "data": "cifar10"}), 422, "'cifar10' does not fit recipe mnist_sample")
    refused(post("/jobs", json={**good, "dataset": "0123456789abcdef", "data": None}), 422, "no uploaded dataset")
    refused(post("/jobs", json={**good, "nproc": 2}), 422, "asks for 2 devices (--nproc 2) but this service has 1")
    refused(post("/jobs", json={**good, "options": {"device": "cuda:3"}}), 422, "the service gives each job its devices")
    refused(post("/jobs", content=b"{", headers={"Content-Type": "application/json"}), 422, "JSON")
    refused(svc.http.get("/jobs", params={"state": "done"}), 422, "unknown state 'done'")
    refused(svc.http.get("/jobs/999"), 404, "no job 999")
    # the token
    refused(httpx.post(svc.url + "/jobs", json=good), 401, "no token")
    refused(httpx.get(svc.url + "/jobs", headers={"Authorization": "Bearer nope"}), 401, "not this service's")
    refused(httpx.get(svc.url + "/jobs/1/events"), 401, "no token")
    assert httpx.get(svc.url + "/health").status_code == 200  # open to all, as the API's description is:
    assert "/jobs/{job_id}/events" in httpx.get(svc.url + "/openapi.json").json()["paths"]
    assert httpx.get(svc.url + "/docs").status_code == 200

    # datasets
    upload = lambda name, data, **q: post("/datasets", params={"filename": name, **q}, content=data)  # noqa: E731
    image = png(tmp_path / "png", 0)
    refused(upload("up.zip", zip_of({"../evil/a.png": image, "cats/b.png": image})), 422, "outside the archive")
    refused(upload("links.tgz", symlink_tar()), 422, "holds a link ('dogs/c.png')")
    bomb = zip_of({"cats/a.png": image, "dogs/b.png": b"\0" * 30_000_000})
    assert len(bomb) < 1_000_000
    refused(upload("bomb.zip", bomb), 422, "refusing to extract")
    big = os.urandom(1_200_000)
    refused(upload("big.zip", big), 413, "over the service's limit of 1 MiB")
    refused(post("/datasets", params={"filename": "big.zip"}, content=iter([big[:600_000], big[600_000:]])), 413,
            "over the service's limit")  # streamed, with no length announced: counted as it comes
    refused(upload("one.zip", zip_of({"cats/a.png": image, "cats/b.png": image})), 422, "at least 2 class folders")
    refused(upload("photos.rar", b"x"), 422, "not a .zip, .tgz")
    refused(upload("empty.zip", b""), 422, "empty")
    refused(upload("x" * 300 + ".zip", zip_of({"cats/a.png": image, "dogs/b.png": image})), 422,
            "at most 255 printable characters (got 304)")
    # what PostgreSQL's text cannot hold (a NUL) is the request's fault, on every store: a 4xx, never a 500
    assert svc.http.get("/datasets/abc%00").status_code in (404, 422)
    refused(post("/jobs", json={**good, "data": "mnist\u0000sample"}), 422, '"data" holds a NUL character')
    refused(post("/jobs", json={**good, "options": {"name": "a\u0000b"}}), 422, "--name holds a NUL character")
    refused(post("/jobs", json={**good, "dataset": "ab\u0000", "data": None}), 422, '"dataset" holds a NUL')

    assert svc.http.get("/jobs").json()["total"] == 0
    assert svc.http.get("/datasets").json()["datasets"] == []
    kept = [p for p in (svc.state / "datasets").rglob("*")] if (svc.state / "datasets").exists() else []
    assert [p for p in kept if p.name != ".incoming"] == [], kept  # no half-extracted or half-received file


def test_the_same_archive_twice_is_one_dataset_with_its_class_counts(svc, tmp_path):
    image = png(tmp_path / "png", 0)
    archive = zip_of({"photos/cats/a.png": image, "photos/cats/b.png": image, "photos/dogs/c.png": image})
    first = svc.http.post("/datasets", params={"filename": "photos.zip"}, content=archive)
    assert first.status_code == 201, first.text
    dataset = first.json()
    assert dataset["classes"] == {"cats": 2, "dogs": 1} and dataset["images"] == 3 and dataset["new"]
    again = svc.http.post("/datasets", params={"filename": "again.zip"}, content=archive)
    assert again.status_code == 200 and again.json()["id"] == dataset["id"] and not again.json()["new"]
    assert [d["id"] for d in svc.http.get("/datasets").json()["datasets"]] == [dataset["id"]]
    refused(svc.http.post("/datasets", params={"filename": "again.zip", "recipe": "mnist_sample"}, content=archive),
            422, "not in the 'mnist_sample' layout")
    job = svc.http.post("/jobs", json={"recipe": "folder", "dataset": dataset["id"], "options": {"epochs": 1}})
    assert job.status_code == 201 and job.json()["dataset"] == dataset["id"], job.text
    refused(svc.http.delete(f"/datasets/{dataset['id']}"), 409, "used by a queued, running or interrupted job")
    assert svc.http.post(f"/jobs/{job.json()['id']}/cancel").json()["state"] in ("cancelled", "stopping")


def test_the_client_says_in_one_line_when_the_server_or_token_is_wrong(svc):
    def jobs(server: str, token: str):
        env = {**os.environ, "TRAINER_SERVER": server, "TRAINER_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "trainer", "jobs", "list"], capture_output=True, text=True,
                              env=env)
    down = jobs(f"http://127.0.0.1:{free_port()}", svc.TOKEN)
    assert down.returncode == 2 and "cannot reach the service" in one_line_error(down)
    wrong = jobs(svc.url, "wrong-token-0123456789")
    assert wrong.returncode == 2 and "(HTTP 401)" in one_line_error(wrong)
    listed = jobs(svc.url, svc.TOKEN)
    assert listed.returncode == 0, listed.stderr
