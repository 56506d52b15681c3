"""`--data URL`: an archive on a web server, downloaded by fastai's own machinery (fastdownload's download_url,
fastcore's urlretrieve) from a real HTTP server on 127.0.0.1, then extracted and checked as a local archive is.
Nothing here patches the download: the server is real, and so are its failures."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import one_line_error, run_dir_of

from trainer.errors import BadInput

FAST = ["--no-pretrained", "--epochs", "1", "--bs", "8", "--arch", "resnet18", "--size", "32"]


class Site:
    """What the server serves, how, and who asked: files by path, paths that drop the connection halfway."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.dropping: set[str] = set()  # send the full Content-Length, then close after half the bytes
        self.requests: list[str] = []


@pytest.fixture
def site():
    site = Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            site.requests.append(self.path)
            body = site.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path in site.dropping else body)
            self.close_connection = True  # the socket closes here: halfway, for a dropping path

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def leaves(fixtures, tmp_path) -> bytes:
    """A .tgz of a 2-class image folder (leaves/healthy, leaves/rust), as a user would publish it."""
    archive = tmp_path / "made" / "leaves.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fixtures / "own", arcname="leaves")
    return archive.read_bytes()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("TRAINER_OFFLINE")


def kept(isolated: Path) -> list[str]:
    """Everything a download left in FASTAI_HOME's archive folder and in the data root's extracted copies."""
    return sorted(str(p.relative_to(isolated)) for folder in ("fastai_home/archive", "datasets/.extracted")
                  if (isolated / folder).is_dir() for p in (isolated / folder).iterdir())


def test_a_url_trains_and_the_second_run_needs_no_network(trainer, site, leaves, online, isolated, monkeypatch):
    site.files["/data/leaves.tgz"] = leaves
    url = f"{site.base}/data/leaves.tgz"
    first = run_dir_of(trainer("fit", "folder", "--data", url, *FAST))
    assert site.requests == ["/data/leaves.tgz"]
    config = json.loads((first / "config.json").read_text())
    assert config["options"]["data"] == config["asked"]["data"] == url  # what was given, for the report and resume
    extracted = Path(config["data"]["path"])
    assert extracted.parent.parent == (isolated / "datasets" / ".extracted").resolve() and extracted.name == "leaves"
    assert config["data"]["classes"] == ["healthy", "rust"]
    (archive,) = (isolated / "fastai_home" / "archive").iterdir()  # fastai's archive folder, no .part left
    assert archive.name.startswith("leaves-") and archive.name.endswith(".tgz") and archive.read_bytes() == leaves

    monkeypatch.setenv("TRAINER_OFFLINE", "1")  # the copy is there: no download, not even a request
    second = run_dir_of(trainer("fit", "folder", "--data", url, *FAST))
    assert site.requests == ["/data/leaves.tgz"]
    assert json.loads((second / "config.json").read_text())["data"]["path"] == str(extracted)


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(trainer, site, leaves, online, isolated):
    from trainer.data.source import locate
    from trainer.recipes import get_recipe

    site.files["/leaves.tgz"] = leaves
    url = f"{site.base}/leaves.tgz"
    actual, wrong = hashlib.sha256(leaves).hexdigest(), "0" * 64
    line = one_line_error(trainer("fit", "folder", "--data", url, "--data-sha256", wrong, *FAST, expect=2))
    assert url in line and wrong in line and actual in line and "--data-sha256" in line and "removed" in line
    assert kept(isolated) == [] and not (isolated / "runs").exists()

    folder = locate(get_recipe("folder"), url, sha256=actual.upper())  # the right one (either case): downloaded
    assert sorted(p.name for p in folder.iterdir()) == ["healthy", "rust"]
    assert len(site.requests) == 2
    assert locate(get_recipe("folder"), url, sha256=actual) == folder and len(site.requests) == 2  # reused

    with pytest.raises(BadInput, match="downloaded before was removed; TRAINER_OFFLINE"):  # offline: not again
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRAINER_OFFLINE", "1")
            locate(get_recipe("folder"), url, sha256=wrong)
    assert kept(isolated) == [] and len(site.requests) == 2
    locate(get_recipe("folder"), url, sha256=actual)
    with pytest.raises(BadInput, match="--data-sha256 expects"):  # a copy that does not match: downloaded again
        locate(get_recipe("folder"), url, sha256=wrong)
    assert kept(isolated) == [] and len(site.requests) == 4


def test_a_dropped_connection_leaves_nothing_and_a_second_try_succeeds(trainer, site, leaves, online, isolated):
    from trainer.data.source import locate
    from trainer.recipes import get_recipe

    site.files["/leaves.tgz"] = leaves
    site.dropping.add("/leaves.tgz")
    url = f"{site.base}/leaves.tgz"
    line = one_line_error(trainer("fit", "folder", "--data", url, *FAST, expect=2))
    assert url in line and "closed early" in line and f"out of {len(leaves)} bytes" in line, line
    assert kept(isolated) == [] and not (isolated / "runs").exists()
    assert not list((isolated / "fastai_home").rglob("*.part"))

    site.dropping.clear()  # the server recovers
    folder = locate(get_recipe("folder"), url)
    assert sorted(p.name for p in folder.iterdir()) == ["healthy", "rust"] and len(site.requests) == 2


def test_a_damaged_download_is_removed(trainer, site, leaves, online, isolated):
    """A body cut short where no length told (here: the first half of the archive, served as all of it) fails to
    extract: one line, and the download goes too, so the next run fetches it again."""
    site.files["/leaves.tgz"] = leaves[: len(leaves) // 2]
    url = f"{site.base}/leaves.tgz"
    line = one_line_error(trainer("fit", "folder", "--data", url, *FAST, expect=2))
    assert "could not be extracted" in line and f"downloaded from {url}: removed" in line
    assert kept(isolated) == []


def test_http_errors_and_unreachable_servers_are_one_line(trainer, site, online, isolated):
    missing = f"{site.base}/gone.tgz"
    line = one_line_error(trainer("fit", "folder", "--data", missing, *FAST, expect=2))
    assert missing in line and "HTTP 404" in line and kept(isolated) == []
    closed = "http://127.0.0.1:9/leaves.tgz"  # the discard port: nothing listens
    line = one_line_error(trainer("fit", "folder", "--data", closed, *FAST, expect=2))
    assert closed in line and "refused" in line.lower() and kept(isolated) == []


def test_offline_refuses_a_url_not_downloaded_yet(trainer, site, leaves, isolated):
    site.files["/leaves.tgz"] = leaves
    url = f"{site.base}/leaves.tgz"
    line = one_line_error(trainer("fit", "folder", "--data", url, *FAST, expect=2))
    assert url in line and "TRAINER_OFFLINE" in line and site.requests == []


@pytest.mark.parametrize("args, words", [
    (["--data", "x.tgz", "--data-sha256", "abc"], "64 hexadecimal digits"),
    (["--data", "x.tgz", "--data-sha256", "g" * 64], "64 hexadecimal digits"),
    (["--data-sha256", "a" * 64], "give --data URL"),
    (["--data", "http://127.0.0.1:9/photos", "--data-sha256", "a" * 64], "must name a .tgz"),
])
def test_usage_errors(trainer, args, words):
    recipe = "digits" if "--data" not in args else "folder"
    assert words in one_line_error(trainer("fit", recipe, *args, expect=2))


def test_sha256_of_a_local_archive_and_of_a_folder(trainer, leaves, isolated):
    from trainer.data.source import locate
    from trainer.recipes import get_recipe

    archive = isolated / "leaves.tgz"
    archive.write_bytes(leaves)
    line = one_line_error(trainer("fit", "folder", "--data", archive, "--data-sha256", "0" * 64, *FAST, expect=2))
    assert str(archive) in line and hashlib.sha256(leaves).hexdigest() in line
    assert archive.read_bytes() == leaves and kept(isolated) == []  # the user's own file is never removed
    assert locate(get_recipe("folder"), str(archive), sha256=hashlib.sha256(leaves).hexdigest()).name == "leaves"
    with pytest.raises(BadInput, match="is a folder"):
        locate(get_recipe("folder"), str(isolated / "datasets" / ".extracted"), sha256="0" * 64)


def test_resume_reads_the_extracted_copy_and_the_url_only_when_it_is_gone(tmp_path):
    from trainer.config import resume_config

    url, sha = "https://example.com/leaves.tgz", "a" * 64
    folder = tmp_path / "leaves"
    folder.mkdir()
    config = {"options": {"recipe": "folder", "data": url, "data_sha256": sha, "epochs": 1}, "asked": {},
              "data": {"path": str(folder)}}
    assert (resume_config(config).data, resume_config(config).data_sha256) == (str(folder), None)
    folder.rmdir()
    assert (resume_config(config).data, resume_config(config).data_sha256) == (url, sha)


def test_submit_uploads_local_data_only(trainer, leaves, isolated):
    """`trainer submit` uploads --data from this machine: a URL is refused, a digest is checked here, before any
    service is asked."""
    url = "http://127.0.0.1:9/leaves.tgz"
    assert "download http://127.0.0.1:9/leaves.tgz first" in one_line_error(
        trainer("submit", "folder", "--data", url, expect=2))
    archive = isolated / "leaves.tgz"
    archive.write_bytes(leaves)
    line = one_line_error(trainer("submit", "folder", "--data", archive, "--data-sha256", "0" * 64, expect=2))
    assert hashlib.sha256(leaves).hexdigest() in line


def steps_heard(events: list):
    """A publish callable that keeps each step's data (trainer.progress)."""
    return lambda kind, **data: events.append(data)


def test_a_download_is_counted_as_a_step_not_fastprogress_on_stdout(site, leaves, online, capsys):
    from trainer.data.source import locate
    from trainer.recipes import get_recipe

    site.files["/leaves.tgz"] = leaves
    heard: list = []
    folder = locate(get_recipe("folder"), f"{site.base}/leaves.tgz", progress=steps_heard(heard))
    assert sorted(p.name for p in folder.iterdir()) == ["healthy", "rust"]
    assert [s["state"] for s in heard][0] == "started" and heard[-1]["state"] == "finished"
    assert {s["step"] for s in heard} == {"download"} and heard[-1]["unit"] == "bytes"
    assert heard[-1]["done"] == heard[-1]["total"] == len(leaves)
    assert capsys.readouterr().out == ""  # no bar (nor its first character) on stdout


def test_a_recipes_download_through_untar_data_is_counted_too(site, fixtures, online, monkeypatch, tmp_path, capsys):
    import fastdownload.core
    from fastai.data.external import URLs

    from trainer.data.source import download_recipe

    archive = tmp_path / "mnist_sample.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fixtures / "mnist_sample", arcname="mnist_sample")
    site.files["/mnist_sample.tgz"] = archive.read_bytes()
    monkeypatch.setattr(URLs, "MNIST_SAMPLE", f"{site.base}/mnist_sample.tgz")  # not in fastai's checks: no hash
    theirs = fastdownload.core.download_url
    heard: list = []
    folder = download_recipe("mnist_sample", progress=steps_heard(heard))
    assert sorted(p.name for p in folder.iterdir()) == ["labels.csv", "train", "valid"]
    assert site.requests == ["/mnist_sample.tgz"]
    assert heard[-1] == {**heard[-1], "step": "download", "state": "finished", "done": archive.stat().st_size}
    assert fastdownload.core.download_url is theirs  # fastdownload's own again, for anyone else
    assert capsys.readouterr().out == ""
