"""The lr_find gate, `--lr review`: a real service job waits after lr_find until a person chooses the rate; and
where the gate cannot work, one line. One tiny training in all."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Service, one_line_error

from trainer.errors import BadInput
from trainer.service.auth import owner_of

# test_jobs.py's tiny run (24 images, 3 batches an epoch), one epoch, its rate chosen at the gate
OPTIONS = {"arch": "test_resnet", "pretrained": False, "epochs": 1, "bs": 8, "interpret": False, "lr": "review"}
SUGGESTIONS = ("minimum", "steep", "valley", "slide")


def test_a_job_waits_at_the_lr_find_gate_until_a_person_chooses_its_rate(fixtures, isolated, store_url):
    svc = Service(isolated, "--data-root", fixtures, db=store_url)
    try:
        job = svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")
        assert job["lr_review"] is None and job["options"]["lr"] == "review"
        (review,) = [e for e in svc.events(job["id"], until=lambda e: e["kind"] == "lr_review")
                     if e["kind"] == "lr_review"]
        assert tuple(review["suggestions"]) == SUGGESTIONS and review["points"] > 0

        waiting = svc.job(job["id"])
        assert waiting["state"] == "running"
        assert waiting["lr_review"] == {"suggestions": review["suggestions"], "run_dir": review["run_dir"]}
        assert waiting["run_dir"] == review["run_dir"]  # known before training starts
        assert [j["lr_review"] for j in svc.http.get("/jobs").json()["jobs"]] == [waiting["lr_review"]]
        run_dir = Path(review["run_dir"])
        assert {"config.json", "lr_find.json", "lr_find.png"} <= {p.name for p in run_dir.iterdir()}

        # a bad rate: 422 with the lr option's own line, and nothing written
        for bad, words in (({"lr": -1}, "--lr must be a positive number, got -1"),
                           ({"lr": "fast"}, "got 'fast'"), ({"rate": 1e-3}, "unknown field 'rate'")):
            answer = svc.http.post(f"/jobs/{job['id']}/lr", json=bad)
            assert answer.status_code == 422 and words in answer.json()["error"], answer.text
        assert not (run_dir / "lr_choice.json").exists()

        env = {**os.environ, "TRAINER_SERVER": svc.url, "TRAINER_TOKEN": svc.TOKEN}
        cli = [sys.executable, "-m", "trainer", "jobs"]
        shown = subprocess.run([*cli, "show", str(job["id"])], capture_output=True, text=True, env=env)
        assert shown.returncode == 0 and "waiting at the lr_find gate: minimum " in shown.stdout, shown
        chosen = subprocess.run([*cli, "lr", str(job["id"]), "2e-3"], capture_output=True, text=True, env=env)
        assert chosen.returncode == 0, chosen.stderr
        assert chosen.stdout.strip() == f"job {job['id']}: learning rate 0.002; it trains on with it"
        again = svc.http.post(f"/jobs/{job['id']}/lr", json={"lr": "valley"})  # answered already
        assert again.status_code == 409, again.text

        done = svc.wait_until_ended(job["id"])
        assert done["state"] == "succeeded" and done["lr_review"] is None, done
        chosen_event = [e for e in svc.events(job["id"]) if e["kind"] == "lr_chosen"]
        assert [(e["lr"], e["suggestion"]) for e in chosen_event] == [(2e-3, None)]
        late = svc.http.post(f"/jobs/{job['id']}/lr", json={"lr": 1e-3})
        assert late.status_code == 409 and "not waiting at the lr_find gate" in late.json()["error"], late.text
    finally:
        svc.stop()

    config = json.loads((run_dir / "config.json").read_text())
    assert config["options"]["lr"] == 2e-3 and config["asked"]["lr"] == "review"
    assert {k: config["lr_find"][k] for k in ("chosen", "lr", "by")} == \
        {"chosen": "typed", "lr": 2e-3, "by": owner_of(Service.TOKEN)}
    assert config["lr_find"]["suggestions"] == review["suggestions"] and config["lr_find"]["at"]
    assert json.loads((run_dir / "lr_choice.json").read_text())["lr"] == 2e-3
    with open(run_dir / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]
    output = (svc.state / "jobs" / str(job["id"]) / "output.log").read_text()
    assert f"`trainer jobs lr {job['id']} RATE`" in output and "at lr 0.002, test_resnet" in output


@pytest.mark.parametrize("args, words", [
    (["fit", "mnist_sample", "--lr", "review", "--nproc", "2"], "--lr review runs lr_find and waits for a person's "
                                                                "choice in one process"),
    (["fit", "digits", "--lr", "bogus"], "--lr must be a number (e.g. 1e-3), 'auto' or 'review', got 'bogus'"),
    (["lr-find", "digits", "--lr", "review"], "lr-find finds a learning rate and trains nothing: it takes no --lr"),
])
def test_where_the_gate_cannot_work_it_is_one_line(trainer, isolated, args, words):
    line = one_line_error(trainer(*args, "--out", isolated / "runs", expect=2))
    assert words in line
    assert not (isolated / "runs").exists()


@pytest.mark.parametrize("body, words", [
    ({"recipe": "digits", "options": {"lr": "review"}, "nproc": 2}, "--lr review runs lr_find and waits"),
    ({"recipe": "digits", "command": "lr-find", "options": {"lr": "review"}}, "it takes no --lr"),
])
def test_the_service_refuses_them_at_submission(body, words, tmp_path):
    from trainer.service.jobs import check_submission

    with pytest.raises(BadInput) as refused:
        check_submission(body, data_root=tmp_path, dataset_path=lambda *_: None, devices_total=2, device_kind="cpu")
    assert words in str(refused.value)
    accepted = check_submission({"recipe": "digits", "options": {"lr": "review"}}, data_root=tmp_path,
                                dataset_path=lambda *_: None, devices_total=1, device_kind="cpu")
    assert accepted.options == {"lr": "review"}


def test_the_terminal_asks_until_an_answer_parses(tmp_path):
    from trainer.training.gate import PROMPT, ask

    suggestions = {"minimum": 1e-3, "steep": 2e-3, "valley": 5e-4}  # slide missing: a short curve
    out = io.StringIO()
    choice = ask(tmp_path, suggestions, io.StringIO("fast\nslide\n0\n\n"), out)
    assert (choice["lr"], choice["suggestion"]) == (5e-4, "valley") and choice["by"] and choice["at"]  # the default
    shown = out.getvalue()
    assert "  valley   5.00e-04" in shown and shown.count(PROMPT) == 4
    assert "got 'fast'" in shown and "no slide suggestion" in shown and "--lr must be a positive number" in shown
    typed = ask(tmp_path, suggestions, io.StringIO("3e-4\n"), io.StringIO())
    assert (typed["lr"], typed["suggestion"]) == (3e-4, None)
    assert ask(tmp_path, suggestions, io.StringIO(""), io.StringIO()) is None  # stdin closed: the file decides


def test_the_gate_events_are_shown_and_logged_whole(tmp_path):
    from rich.console import Console

    from trainer.training.console import ConsoleDisplay
    from trainer.training.events import Events, JsonLinesLog

    out, err = io.StringIO(), io.StringIO()
    quiet = ConsoleDisplay(Console(file=out), quiet=True, errors=Console(file=err))
    events = Events(quiet, JsonLinesLog(tmp_path / "events.jsonl"))
    events.publish("lr_review", run_dir="runs/x/1", suggestions={"valley": 5e-4}, points=60)
    events.note("waiting for a learning rate: write it")  # what to do shows, even quiet
    events.publish("lr_chosen", lr=5e-4, suggestion="valley")
    events.note("fit_one_cycle for 1 epoch(s) at lr 0.0005")  # and the rest is quiet again
    assert out.getvalue() == "" and err.getvalue() == "waiting for a learning rate: write it\n"
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["kind"], e.get("points"), e.get("lr")) for e in logged] == \
        [("lr_review", 60, None), ("note", None, None), ("lr_chosen", None, 5e-4), ("note", None, None)]
