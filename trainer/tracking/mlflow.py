"""`--mlflow [URI]`: a run reported to MLflow, as a subscriber to training's events (trainer.training.events).

  run_started   the MLflow run is created (or, on --resume, the one in RUN_DIR/mlflow.json is reopened), tagged
                with the recipe, trainer's run id and directory, and the git commit; the resolved options
                (config.json's "options") are its params; a resumed run's epochs MLflow lacks are logged
  epoch         the epoch's metrics row, at step = epoch
  finished      the summary's figures (final/<metric>, wall_seconds, ...), the baseline verdict (tags), and the
                model, plots, report, metrics.csv, config.json and summary.json as artifacts; the run FINISHED
  failed        the run FAILED;  interrupted: KILLED (a --resume sets it RUNNING again)

MLflow never stops a run: a tracking server that does not answer at the start is one warning line and the run
trains without it; any MLflow error later is one warning, and nothing more is sent. Every call is bounded
(MLflow's HTTP client would otherwise retry with backoff for minutes): the first with no retry and a short
timeout, the others with few retries, unless MLFLOW_HTTP_REQUEST_* are set. The mlflow package is imported only
when a run starts with --mlflow; `require` checks it before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from trainer import files
from trainer.runs import rundir
from trainer.training.events import Event, Events

# MLflow's HTTP client settings for trainer's calls, unless the environment sets them: the first call (is the
# server there?) fails at once, the others after a couple of quick retries; uploads keep MLflow's own timeout.
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
LATER_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}
# MLflow 3 refuses its file store (./mlruns) unless told it is wanted; --mlflow FOLDER is asked for explicitly
FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}

MODEL_FILES = (rundir.WEIGHTS, rundir.MODEL_META, rundir.MODEL_PICKLE)  # logged under model/
RUN_FILES = (rundir.REPORT, rundir.METRICS, rundir.CONFIG, rundir.SUMMARY)  # and every *.png: at the root
NOT_METRICS = ("epoch", "phase")


def require() -> None:
    """BadInput before anything is written when the mlflow package is missing: pip install 'trainer[mlflow]'."""
    from trainer.extras import require as require_extra

    require_extra("mlflow", "--mlflow")


@contextmanager
def mlflow_environment(settings: dict):
    """`settings` in os.environ for the duration of an MLflow call, each only where the user has not set it."""
    added = [name for name in settings if name not in os.environ]
    os.environ.update({name: settings[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def reason(error: Exception) -> str:
    """An MLflow error in a few words: the socket's own error when there is one (MLflow wraps it in a long
    message naming the URL, the retries and the pool), else its first line, cut short."""
    text = str(error).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 160 else first[:157] + "..."


class MlflowTracker:
    """One run's MLflow run, fed by the run's events (rank 0's: the other ranks publish nothing)."""

    def __init__(self, uri: str, run_dir: Path, events: Events):
        self.uri, self.run_dir, self.events = uri, Path(run_dir), events
        self.client = None
        self.run_id: str | None = None
        self.dropped = False

    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"on_{event.kind}", None)
        if handler is None or self.dropped or event.kind != "run_started" and self.run_id is None:
            return
        starting = event.kind == "run_started"
        try:
            with mlflow_environment({**(PROBE_HTTP if starting else LATER_HTTP),
                                     **(FILE_STORE if self.uri.startswith("file:") else {})}):
                handler(event.data)
        except Exception as e:  # never the run's end: one line, then MLflow is left alone
            self.dropped = True
            what = "is unreachable" if starting and self.run_id is None else "failed"
            self.events.warn(f"MLflow at {self.uri} {what} ({reason(e)}): training goes on without MLflow"
                             + ("" if starting else f" (its run {self.run_id} lacks what came after)"))

    # the events

    def on_run_started(self, data: dict) -> None:
        from mlflow.tracking import MlflowClient

        config = json.loads((self.run_dir / rundir.CONFIG).read_text())
        self.client = MlflowClient(tracking_uri=self.uri)
        known, _ = rundir.read_json(self.run_dir / rundir.MLFLOW)
        logged: dict = {}
        if data.get("resumed_after") is not None and known and known.get("tracking_uri") == self.uri \
                and known.get("run_id"):
            run = self.client.get_run(known["run_id"])  # the first call: is it there?
            self.run_id, logged = run.info.run_id, run.data.params
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment_id = self.experiment_id(config["recipe"]["name"])  # the first call
            run = self.client.create_run(experiment_id, run_name=f"{config['recipe']['name']}/{self.run_dir.name}",
                                         tags=self.tags(config))
            self.run_id = run.info.run_id
            files.write_json(self.run_dir / rundir.MLFLOW, {"tracking_uri": self.uri, "experiment_id": experiment_id,
                                                            "run_id": self.run_id})
        self.log_params(config["options"], logged)
        if data.get("resumed_after"):
            self.log_missing_epochs()

    def on_epoch(self, data: dict) -> None:
        self.log_row(data["row"])

    def on_finished(self, data: dict) -> None:
        from mlflow.entities import Metric

        summary = data["summary"]
        step, now = summary.get("final_epoch") or 0, int(time.time() * 1000)
        figures = {**{f"final/{name}": value for name, value in (summary.get("final") or {}).items()},
                   **{name: summary.get(name) for name in ("wall_seconds", "train_seconds", "train_images_per_second",
                                                           "epochs_run")}}
        metrics = [Metric(name, float(value), now, step) for name, value in figures.items() if is_number(value)]
        baseline = summary.get("baseline") or {}
        tags = {f"baseline.{key}": str(baseline[key]) for key in ("status", "metric", "expected", "actual")
                if baseline.get(key) is not None}
        tags.update({"trainer.final_epoch": str(step), "trainer.stopped_early": str(summary.get("stopped_early"))})
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.log_artifacts()
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_failed(self, data: dict) -> None:
        self.client.set_terminated(self.run_id, "FAILED")

    def on_interrupted(self, data: dict) -> None:
        self.client.set_terminated(self.run_id, "KILLED")  # `trainer fit --resume` sets it RUNNING again

    # what they log

    def experiment_id(self, recipe: str) -> str:
        """MLFLOW_EXPERIMENT_NAME's experiment, else one named after the recipe; created when missing."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another run created it meanwhile
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def tags(self, config: dict) -> dict:
        commit = (config.get("environment") or {}).get("git_commit")
        return {"recipe": config["recipe"]["name"], "trainer.run_id": self.run_dir.name,
                "trainer.run_dir": str(self.run_dir.resolve()), "trainer.command": config.get("command", "fit"),
                "mlflow.source.name": "trainer", "mlflow.source.type": "LOCAL",
                **({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")} if commit else {})}

    def log_params(self, options: dict, logged: dict) -> None:
        """The resolved options as params, each once (MLflow's params cannot change: a resumed run adds only the
        ones it lacks)."""
        from mlflow.entities import Param

        params = [Param(name, str(value)) for name, value in options.items()
                  if value is not None and name not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params in one batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_row(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(name, float(value), now, step) for name, value in row.items()
                   if name not in NOT_METRICS and is_number(value)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_missing_epochs(self) -> None:
        """A resumed run's epochs from before the resume that MLflow lacks (the server was down then, or the run
        had no MLflow run yet): from metrics.csv, the rows the checkpoint kept."""
        header, rows = rundir.read_metrics_or_empty(self.run_dir)
        if not rows:
            return
        first = next((name for name in header if name not in (*NOT_METRICS, "seconds")), "seconds")
        have = {m.step for m in self.client.get_metric_history(self.run_id, first)}
        for row in rows:
            if row[0] not in have:
                self.log_row(dict(zip(header, row)))

    def log_artifacts(self) -> None:
        for name in MODEL_FILES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name), "model")
        for path in [*(self.run_dir / name for name in RUN_FILES), *sorted(self.run_dir.glob("*.png"))]:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))


def is_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
