"""--mlflow: params, every epoch's metrics, the summary and the artifacts, read back through MLflow's own client
from its file store and from a real `mlflow server` (SQLite backend); --resume continues the same MLflow run; an
unreachable server is one warning and the run trains on; a missing package is one line before anything runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import SignalAt, free_port, interrupted_fit, no_runs_written, one_line_error, run_dir_of

from trainer.config import FitConfig
from trainer.errors import BadInput
from trainer.options import resolve_mlflow_uri
from trainer.runs import rundir
from trainer.tracking.mlflow import MlflowTracker
from trainer.training.events import Event, Events, Recorder

pytest.importorskip("mlflow")

FAST = ["--no-pretrained", "--arch", "resnet18", "--bs", "8", "--no-interpret"]


def fit_args(fixtures, epochs=2, *extra):
    return ["fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FAST, "--epochs", epochs, *extra]


@pytest.fixture(autouse=True)
def file_store_allowed(monkeypatch):
    """MLflow 3 refuses to open a file store unless told (trainer tells it for its own calls): so does this
    test's client."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def mlflow_run(run_dir: Path):
    """(client, the MLflow run) that the run directory's mlflow.json names."""
    from mlflow.tracking import MlflowClient

    known = json.loads((run_dir / rundir.MLFLOW).read_text())
    client = MlflowClient(tracking_uri=known["tracking_uri"])
    return client, client.get_run(known["run_id"])


def check_logged(run_dir: Path, uri: str, epochs: int):
    """What an MLflow user reads back: the options as params, one value per epoch of every metrics.csv column,
    the summary, the tags and the artifacts."""
    config = json.loads((run_dir / rundir.CONFIG).read_text())
    assert config["options"]["mlflow"] == uri
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.data.params == {name: str(value) for name, value in config["options"].items() if value is not None}
    with open(run_dir / rundir.METRICS) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    for name in rows[0]:
        if name in ("epoch", "phase"):
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert [step for step, _ in history] == list(range(1, epochs + 1)), name
        assert [value for _, value in history] == pytest.approx([float(r[name]) for r in rows]), name
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    for name, value in summary["final"].items():
        assert run.data.metrics[f"final/{name}"] == pytest.approx(value)
    assert run.data.metrics["wall_seconds"] == pytest.approx(summary["wall_seconds"])
    tags = run.data.tags
    assert tags["recipe"] == "mnist_sample" and tags["trainer.run_id"] == run_dir.name
    assert tags["mlflow.runName"] == f"mnist_sample/{run_dir.name}"
    assert tags.get("git_commit") == config["environment"]["git_commit"]
    assert tags["baseline.status"] == summary["baseline"]["status"]
    root = {a.path for a in client.list_artifacts(run.info.run_id)}
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"report.html", "metrics.csv", "config.json", "summary.json", "history.png", "batch.png"} <= root
    assert {"model/model.safetensors", "model/model.json", "model/model.pkl"} <= model
    saved = Path(client.download_artifacts(run.info.run_id, "model/model.json", str(run_dir.parent / "download")))
    assert saved.read_text() == (run_dir / rundir.MODEL_META).read_text()
    return client, run


def test_a_run_logs_to_the_file_store_by_default(trainer, fixtures, isolated):
    """--mlflow alone: ./mlruns, recorded as an absolute file URI (a resume or the service elsewhere agree)."""
    result = trainer(*fit_args(fixtures), "--mlflow")
    run_dir = run_dir_of(result)
    check_logged(run_dir, (isolated / "mlruns").resolve().as_uri(), epochs=2)
    assert "MLflow" not in result.stderr


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server`: SQLite backend, artifacts served by it, on 127.0.0.1; ready once it answers."""
    base = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination", str(base / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=open(base / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (base / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (base / "server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_run_logs_to_a_tracking_server(trainer, fixtures, mlflow_server):
    run_dir = run_dir_of(trainer(*fit_args(fixtures), "--mlflow", mlflow_server))
    client, run = check_logged(run_dir, mlflow_server, epochs=2)
    assert client.get_experiment(run.info.experiment_id).name == "mnist_sample"


def test_resume_continues_the_same_mlflow_run(trainer, fixtures, isolated, monkeypatch):
    uri = (isolated / "store").as_uri()
    run_dir = interrupted_fit(trainer, monkeypatch, [*fit_args(fixtures, 3), "--mlflow", uri],
                              SignalAt(epoch=2, training=True), isolated / "runs")
    client, run = mlflow_run(run_dir)
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [1]
    # the run's own store, also when given again; another one is refused
    assert "drop --mlflow" in trainer("fit", "--resume", run_dir, "--mlflow", "elsewhere", expect=2).stderr
    trainer("fit", "--resume", run_dir, "--mlflow", uri)
    client, resumed = check_logged(run_dir, uri, epochs=3)
    assert resumed.info.run_id == run.info.run_id
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_an_unreachable_server_is_one_warning_and_training_goes_on(trainer, fixtures, isolated):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = trainer(*fit_args(fixtures, 1), "--mlflow", uri)
    run_dir = run_dir_of(result)
    assert (run_dir / rundir.SUMMARY).is_file() and not (run_dir / rundir.MLFLOW).exists()
    said = [line for line in result.stderr.splitlines() if "MLflow" in line or "mlflow" in line]
    assert len(said) == 1 and f"MLflow at {uri} is unreachable" in said[0], result.stderr
    assert "training goes on without MLflow" in said[0] and "Traceback" not in result.output


def started(run_dir: Path, uri: str) -> tuple[MlflowTracker, Recorder]:
    run_dir.mkdir(parents=True)
    (run_dir / rundir.CONFIG).write_text(json.dumps({
        "recipe": {"name": "digits"}, "command": "fit", "options": {"recipe": "digits", "epochs": 1, "mlflow": uri},
        "environment": {"git_commit": None}}))
    recorder = Recorder()
    tracker = MlflowTracker(uri, run_dir, Events(recorder))
    return tracker, recorder


def test_the_probe_gives_up_at_once_and_mlflow_is_left_alone(isolated):
    """No minutes of MLflow's retries: the first call fails fast, and nothing is sent after it."""
    uri = f"http://127.0.0.1:{free_port()}"
    tracker, recorder = started(isolated / "run", uri)
    began = time.monotonic()
    tracker(Event("run_started", {"run_dir": "run", "resumed_after": None}))
    assert time.monotonic() - began < 15
    (warning,) = [e.data for e in recorder.events]
    assert warning["level"] == "warning" and "Connection refused" in warning["text"]
    tracker.client = None  # any later call would raise AttributeError: none is made
    for kind, data in (("epoch", {"row": {"epoch": 1, "valid_loss": 0.5}}), ("finished", {"summary": {}})):
        tracker(Event(kind, data))
    assert len(recorder.events) == 1


def test_an_mlflow_error_later_is_one_warning_never_a_crash(isolated):
    tracker, recorder = started(isolated / "run", (isolated / "mlruns").as_uri())
    tracker(Event("run_started", {"run_dir": "run", "resumed_after": None}))
    assert tracker.run_id and not recorder.events

    class Gone:
        def __getattr__(self, name):
            raise ConnectionError("[Errno 111] Connection refused")

    tracker.client = Gone()  # the server died mid-run
    tracker(Event("epoch", {"row": {"epoch": 1, "valid_loss": 0.5}}))
    tracker(Event("finished", {"summary": {}}))
    (warning,) = [e.data["text"] for e in recorder.events]
    assert "failed ([Errno 111] Connection refused): training goes on without MLflow" in warning


def test_without_the_package_it_is_one_line_before_anything_runs(trainer, fixtures, isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    assert one_line_error(trainer(*fit_args(fixtures), "--mlflow", expect=2)) == (
        "error: --mlflow needs the mlflow extra (mlflow is missing): pip install 'trainer[mlflow]'")
    assert no_runs_written(isolated)


def test_the_flag_alone_or_with_a_uri(trainer, monkeypatch, isolated):
    import trainer.training.fit as fit

    caught = []
    monkeypatch.setattr(fit, "fit", lambda cfg, events: caught.append(cfg) or (None, None))
    for args, expected in ((["--mlflow"], "default"), (["--mlflow", "--epochs", "2"], "default"),
                           (["--mlflow", "http://127.0.0.1:5000"], "http://127.0.0.1:5000"),
                           (["--mlflow=mlruns2"], "mlruns2"), ([], None)):
        trainer("fit", "digits", *args)
        assert caught.pop().mlflow == expected, args
    assert "must be a tracking URI" in trainer("fit", "digits", "--mlflow=", expect=2).stderr
    help_text = " ".join(trainer("fit", "--help").stdout.replace("│", " ").split())
    assert "MLFLOW_TRACKING_URI, else ./mlruns" in help_text


def test_the_uri_is_resolved_once(isolated):
    assert resolve_mlflow_uri(None) is None and resolve_mlflow_uri(False) is None
    assert resolve_mlflow_uri("default", {}) == (isolated / "mlruns").as_uri()
    assert resolve_mlflow_uri(True, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    assert resolve_mlflow_uri("runs/mlruns") == (isolated / "runs" / "mlruns").as_uri()
    for kept in ("http://127.0.0.1:5000", "sqlite:///mlflow.db", "databricks", "file:///srv/mlruns"):
        assert resolve_mlflow_uri(kept) == (kept if ":" in kept else (isolated / kept).as_uri())
    with pytest.raises(BadInput, match="--mlflow must be a tracking URI"):
        FitConfig("digits", mlflow="  ").check()


def test_a_service_job_names_a_tracking_server_not_a_server_path(tmp_path):
    from trainer.service.jobs import check_submission

    def submit(mlflow):
        return check_submission({"recipe": "digits", "options": {"mlflow": mlflow}}, data_root=tmp_path,
                                dataset_path=lambda *_: None, devices_total=1, device_kind="cpu")

    for accepted in ("default", "http://mlflow.internal:5000", "https://mlflow.example.com"):
        submit(accepted)
    for path in ("/srv/mlruns", "file:///etc", "sqlite:////srv/mlflow.db", "mlruns"):
        with pytest.raises(BadInput, match="a job cannot name a server path in options.mlflow"):
            submit(path)


def test_a_run_asked_for_mlflow_from_python_reads_back(isolated):
    """`trainer.fit(..., mlflow=True)`: config.json's "asked" keeps True, its "options" the URI; both read back."""
    from trainer.runs.rundir import check_options

    uri = (isolated / "mlruns").as_uri()
    for where, value in (("asked", True), ("asked", "default"), ("options", uri)):
        check_options(isolated / "config.json", where, {"recipe": "digits", "mlflow": value})
    with pytest.raises(BadInput, match="is damaged: asked: --mlflow must be a tracking URI"):
        check_options(isolated / "config.json", "asked", {"recipe": "digits", "mlflow": 3})
