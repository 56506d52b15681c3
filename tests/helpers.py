"""Helpers the tests share: tiny images, the in-process CLI, run directories, signals, subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import queue
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
from fastai.callback.core import Callback
from PIL import Image
from typer.testing import CliRunner

import trainer
from trainer.cli import app

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAT_BREEDS = ["Abyssinian", "Bengal"]
DOG_BREEDS = ["beagle", "pug"]


def draw(path: Path, class_index: int, n_classes: int, size=(28, 28), mode="L", seed=0) -> None:
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = rng.integers(0, 50, size=(height, width, 3), dtype=np.uint8)
    band = max(1, height // n_classes)
    pixels[class_index * band:(class_index + 1) * band] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def class_folders(root: Path, classes, per_class: int, **kw) -> None:
    for k, name in enumerate(classes):
        for i in range(per_class):
            draw(root / str(name) / f"{k}_{i}.png", k, len(classes), seed=zlib.crc32(f"{root.parent.name}/{root.name}/{k}/{i}".encode()), **kw)


class Trainer:
    """The CLI called in-process, as a user would call it."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args, expect: int = 0):
        result = self.runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == expect, (
            f"exit {result.exit_code}, expected {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"exception: {result.exception!r}")
        return result


@contextlib.contextmanager
def offline_data(base: Path):
    """For a run shared by several tests (a module or session fixture, outside `isolated`): its own data root
    under `base`, and no downloads."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_DATA", str(base / "datasets"))
        mp.setenv("TRAINER_OFFLINE", "1")
        yield mp


def pid_after_a_moment(_item) -> int:
    """The worker process's id, after a moment's work (so every worker of a pool takes some)."""
    import time

    time.sleep(0.002)
    return os.getpid()


def run_dir_of(result) -> Path:
    """`trainer fit` prints the run directory last."""
    return Path(result.stdout.strip().splitlines()[-1])


def no_runs_written(root: Path) -> bool:
    return not (root / "runs").exists()


def run_python(code: str) -> subprocess.CompletedProcess:
    """`python -c CODE` in a fresh interpreter that imports this same trainer."""
    path = [str(Path(trainer.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def without_progress(stderr: str) -> list[str]:
    """stderr's lines but the finished steps' (trainer.progress: `scanned 39 images in 0.1 s`)."""
    from trainer.progress import LINE

    return [line for line in stderr.strip().splitlines() if not LINE.match(line)]


def one_line_error(result) -> str:
    lines = without_progress(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in (getattr(result, "output", None) or result.stdout + result.stderr)
    return lines[0]


class SignalAt(Callback):
    """Ctrl-C at one exact moment: SIGINT to this process at batch `batch` of epoch `epoch` (1-based, as in
    metrics.csv), in its training or validation pass. Deterministic, unlike a timer."""

    def __init__(self, epoch: int, training: bool, batch: int = 1):
        self.at, self.sent = (epoch, training, batch), False

    def after_batch(self):
        now = (len(self.learn.run_log.rows) + 1, self.training, self.iter + 1)
        if now == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def interrupted_fit(trainer, monkeypatch, args, signal_at: SignalAt, out: Path) -> Path:
    """`trainer fit ARGS` stopped by `signal_at`; the new run directory under `out`."""
    import trainer.training.loop as loop

    before = set(out.glob("*/*"))
    plain = loop.early_stopping
    with monkeypatch.context() as m:  # the training callbacks come from here: add the Ctrl-C to them
        m.setattr(loop, "early_stopping", lambda cfg, recipe, *done: [*plain(cfg, recipe, *done), signal_at])
        result = trainer(*args, expect=130)
    assert signal_at.sent and "interrupted" in result.stderr and "--resume" in result.stderr
    (run_dir,) = set(out.glob("*/*")) - before
    return run_dir


class Process:
    """A subprocess whose output is read line by line as it comes: a thread drains each pipe (a full pipe
    would stall the process), so a test waits for a line the process prints, never for a length of time."""

    def __init__(self, args: list, merge_stderr: bool = True, **kwargs):
        self.popen = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True,
                                      **kwargs)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []  # stdout (with stderr when merged), as read so far
        self.errors: list[str] = []  # stderr, when kept apart
        self.drains = [threading.Thread(target=self._drain, args=(self.popen.stdout, self.output, self.lines),
                                        daemon=True)]
        if not merge_stderr:
            self.drains.append(threading.Thread(target=self._drain, args=(self.popen.stderr, self.errors, None),
                                                daemon=True))
        for drain in self.drains:
            drain.start()

    @staticmethod
    def _drain(pipe, kept: list, lines):
        for line in pipe:
            kept.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # the process closed its output: it ended

    def wait_for(self, text: str, timeout: float = 300) -> str:
        """The next output line containing `text`; fails if the process ends first (`timeout`, the longest
        silence allowed between two lines, only bounds a hang)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"{self.popen.args[:4]} ended before '{text}':\n{''.join(self.output)}"
                                     f"{''.join(self.errors)}")
            if text in line:
                return line

    def finish(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the process to end; (its whole stdout, its whole stderr)."""
        self.popen.wait(timeout)
        for drain in self.drains:
            drain.join(timeout)
        return "".join(self.output), "".join(self.errors)

    def stop(self):
        self.popen.terminate()
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def chromium() -> str | None:
    """The system's chromium (.ci/run installs Debian's): the report and page tests drive it headless."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


STORES = Path(__file__).resolve().parent / "service" / "stores"


def earlier_store(name: str, data_root: Path | None = None) -> str:
    """The SQL text of a job store an earlier release wrote (tests/service/stores/NAME.sql, by that release's own
    Store); its jobs' data folders moved to `data_root` (they were under /srv/trainer/data where it was written)."""
    text = (STORES / f"{name}.sql").read_text()
    return text.replace("/srv/trainer/data/", f"{data_root}/") if data_root is not None else text


def sqlite_store_from(sql: str, path: Path) -> str:
    """A SQLite file holding `sql`; its URL."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(sql)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def postgres_database(admin_url: str):
    """A new, empty database on the PostgreSQL server of `admin_url` (a role that may CREATE DATABASE): its URL,
    as a user would give it to --db. Dropped at the end, after ending its connections (a service a test killed
    leaves some)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from trainer.service.store import with_driver

    name = f"trainer_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(with_driver(admin_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as db:
            db.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name "
                            "AND pid <> pg_backend_pid()"), {"name": name})
            db.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(run_dir: Path, *options):
    """`trainer serve RUN_DIR OPTIONS` as a real process on a free port: a generator for a fixture, yielding
    (base URL, process) once it printed "ready:" and stopping it at the end whatever happens."""
    port = free_port()
    process = Process([sys.executable, "-m", "trainer", "serve", str(run_dir), "--port", str(port), *options])
    try:
        process.wait_for("ready: http://127.0.0.1:")
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.stop()


class Service:
    """A real `trainer service` process on a free port, with an HTTP client that sends its token. `db`: its
    store's URL (--db; the service's default, a SQLite file in its state folder, when None)."""

    TOKEN = "test-token-0123456789abcdef"

    def __init__(self, root: Path, *options, port: int | None = None, env: dict | None = None,
                 db: str | None = None, wait: bool = True):
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state, self.runs = root / "service", root / "runs"
        self.env = {**os.environ, "TRAINER_TOKEN": self.TOKEN, **(env or {})}
        self.http = None  # once it is ready
        self.process = Process([sys.executable, "-m", "trainer", "service", "--port", str(self.port), "--devices",
                                "cpu", "--state", self.state, "--runs", self.runs, *(["--db", db] if db else []),
                                *options], env=self.env)
        if wait:
            self.ready()

    def ready(self) -> "Service":
        """Once it printed "ready:" (the store open, migrated): its HTTP client."""
        import httpx

        self.process.wait_for("ready: http://127.0.0.1:")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.TOKEN}"}, timeout=60)

        return self

    def submit(self, recipe: str, **body) -> dict:
        answer = self.http.post("/jobs", json={"recipe": recipe, **body})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def job(self, job_id: int) -> dict:
        return self.http.get(f"/jobs/{job_id}").raise_for_status().json()

    def events(self, job_id: int, last_event_id: int = 0, until=None) -> list[dict]:
        """The job's server-sent events after `last_event_id`, read until the stream ends (the job ended) or
        until `until(event)` is true (then the connection is dropped)."""
        import httpx

        from trainer.service.client import parse_stream

        seen = []
        try:
            with self.http.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(last_event_id)},
                                  timeout=300) as response:
                assert response.status_code == 200, response.read()
                for event in parse_stream(line.encode() + b"\n" for line in response.iter_lines()):
                    seen.append(event)
                    if until is not None and until(event):
                        break
        except httpx.HTTPError as e:  # the stream broke: what the service said about it
            raise AssertionError(f"job {job_id}'s events: {e!r} after {seen[-1:]}; the service's output:\n"
                                 f"{''.join(self.process.output)}") from e
        return seen

    def wait_until_ended(self, job_id: int) -> dict:
        self.events(job_id, self.job(job_id)["events"])  # the stream ends when the job has ended
        return self.job(job_id)

    def stop(self):
        if self.http is not None:
            self.http.close()
        self.process.stop()


LOSSES = ("train_loss", "valid_loss", "error_rate")  # what an interrupted job must reproduce


def metrics(run_dir) -> list[dict]:
    """A run's metrics.csv rows."""
    import csv

    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_training(run_dir, reference) -> None:
    """Every epoch once, with the uninterrupted run's losses and metrics."""
    import json

    got, want = metrics(run_dir), metrics(reference)
    assert [int(r["epoch"]) for r in got] == list(range(1, len(want) + 1)), got
    for row, expected in zip(got, want):
        for column in LOSSES:
            assert abs(float(row[column]) - float(expected[column])) < 1e-4, (column, row, expected)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["epochs_run"] == len(want)
