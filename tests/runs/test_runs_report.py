"""Run history and reports: `trainer runs`, report.html (parsed, and loaded in a real browser), TensorBoard."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import chromium, run_dir_of
from PIL import Image

from trainer.config import LABELLING, MACHINE_OPTIONS, FitConfig
from trainer.runs.report import reproduce_command


def copy_run(source: Path, target: Path, files=("config.json", "summary.json", "metrics.csv")) -> Path:
    target.mkdir(parents=True)
    for name in files:
        shutil.copy(source / name, target / name)
    return target


def test_runs_lists_newest_first_and_survives_damage(trainer, digits_run, tmp_path):
    source, _ = digits_run
    out = tmp_path / "history"
    copy_run(source, out / "digits" / "20261101-100000")
    copy_run(source, out / "digits" / "20261102-100000")
    stopped = copy_run(source, out / "digits" / "20261104-000000", files=("config.json", "metrics.csv"))
    (stopped / "checkpoint.json").write_text("{}")
    damaged = out / "mnist" / "20261103-090000"
    damaged.mkdir(parents=True)
    (damaged / "config.json").write_text('{"options": {"arch": "resn')  # cut off mid-write by a crash
    (out / "mnist" / "20261103-090000-2").mkdir()  # a run that died before writing anything
    odd = copy_run(source, out / "mnist" / "20261102-120000")
    (odd / "config.json").write_text('{"options": "resnet34", "device": "cpu"}')  # JSON, but not trainer's
    (out / "mnist" / "latest").symlink_to("20261103-090000-2")

    rows = json.loads(trainer("runs", "--out", out, "--json").stdout)
    assert [r["id"] for r in rows] == ["20261104-000000", "20261103-090000-2", "20261103-090000",
                                      "20261102-120000", "20261102-100000", "20261101-100000"]
    states = {r["id"]: r["state"] for r in rows}
    assert states == {"20261104-000000": "stopped (resumable)", "20261103-090000-2": "damaged (config.json missing)",
                      "20261103-090000": "damaged (config.json unreadable)",
                      "20261102-120000": "damaged (unexpected content: AttributeError)", "20261102-100000": "done",
                      "20261101-100000": "done"}
    done = rows[-1]
    summary = json.loads((source / "summary.json").read_text())
    assert done["final"] == summary["final"] and done["arch"] == "resnet34" and done["epochs"] == 3
    assert rows[0]["final"]["accuracy"] == pytest.approx(summary["final"]["accuracy"])  # from metrics.csv

    table = trainer("runs", "--out", out).stdout
    assert all(r["id"] in table for r in rows) and "damaged (config.json unreadable)" in table
    assert table.index("20261104-000000") < table.index("20261101-100000")
    assert [r["recipe"] for r in json.loads(trainer("runs", "digits", "--out", out, "--json").stdout)] == ["digits"] * 3

    shown = json.loads(trainer("runs", "show", "20261102-100000", "--out", out, "--json").stdout)
    assert shown["config"]["options"]["epochs"] == 3 and len(shown["metrics"]) == 3
    assert "damaged" in trainer("runs", "show", str(damaged), "--out", out).stdout
    assert "unexpected content" in trainer("runs", "show", str(odd), "--out", out).stdout
    assert "no run 'nope'" in trainer("runs", "show", "nope", "--out", out, expect=2).stderr
    assert "unknown recipe" in trainer("runs", "mnsit", "--out", out, expect=2).stderr


class Page(HTMLParser):
    """The images and links of a page, and the cells of each table."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("a", "link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None


def test_report_is_self_contained_and_matches_metrics(trainer, digits_run_copy):
    run_dir, _ = digits_run_copy  # the report is deleted and written again: a copy of its own
    page = Page()
    page.feed((run_dir / "report.html").read_text())
    assert not page.links, f"the report must not load anything: {page.links}"
    shown = set()
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(image["src"].split(",", 1)[1])
        assert png == (run_dir / image["data-file"]).read_bytes()  # the run's own file, embedded
        with Image.open(io.BytesIO(png)) as decoded:
            decoded.load()
        shown.add(image["data-file"])
    assert {"history.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "top_losses.png"} <= shown

    with open(run_dir / "metrics.csv", newline="") as f:
        expected = [[float(v) if i != 1 else v for i, v in enumerate(row)] for row in list(csv.reader(f))[1:]]
    epochs = next(t for t in page.tables if t[0][:2] == ["epoch", "phase"])
    assert [[float(v) if i != 1 else v for i, v in enumerate(row)] for row in epochs[1:]] == expected
    text = (run_dir / "report.html").read_text()
    assert "trainer fit digits --epochs 3 --lr 0.01 --bs 64 --arch resnet34 --no-pretrained" in text
    # digits' baseline is the suite's own learning threshold, which the run reaches (test_fit.test_digits_learns)
    assert json.loads((run_dir / "summary.json").read_text())["baseline"]["status"] == "met"
    assert '>met</span>' in text

    (run_dir / "report.html").unlink()
    assert trainer("report", str(run_dir)).stdout.strip() == str(run_dir / "report.html")
    assert (run_dir / "report.html").read_text() == text


def test_baseline_verdicts():
    """Baseline.judge on runs whose answer is known: at most an error rate, at least an accuracy (the bound
    itself meets it), and no verdict for a run trained otherwise than the baseline's."""
    from trainer.recipes import Baseline

    error = Baseline("error_rate", 0.02, 1, True, "lesson 1")
    run = {"epochs": 1, "pretrained": True, "arch": "resnet34", "lr": 0.002}
    assert [error.judge(run, {"error_rate": e})["status"] for e in (0.0, 0.02, 0.0201, 0.5)] == \
        ["met", "met", "missed", "missed"]
    accuracy = Baseline("accuracy", 0.9, 3, False, "the suite")
    scratch = {"epochs": 3, "pretrained": False, "arch": "resnet34"}
    assert [accuracy.judge(scratch, {"accuracy": a})["status"] for a in (1.0, 0.9, 0.8999, 0.1)] == \
        ["met", "met", "missed", "missed"]
    assert accuracy.judge(scratch, {"accuracy": 0.95, "error_rate": 0.05}) == {
        "metric": "accuracy", "expected": 0.9, "epochs": 3, "pretrained": False, "arch": "resnet34",
        "source": "the suite", "status": "met", "actual": 0.95}
    for other in ({"epochs": 2}, {"pretrained": False}, {"arch": "resnet18"}):
        verdict = error.judge({**run, **other}, {"error_rate": 0.0})
        assert (verdict["status"], verdict["actual"]) == ("not comparable", 0.0), other
    verdict = error.judge(run, {"accuracy": 0.99})  # the run did not measure the baseline's metric
    assert (verdict["status"], verdict["actual"]) == ("not comparable", None)


PROBE = """<script>window.addEventListener('load', () => {
  const failed = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.dataset.file);
  document.body.dataset.failed = JSON.stringify(failed); document.body.dataset.images = document.images.length;
});</script>"""


def load_in_browser(page: Path) -> tuple[list, int]:
    """Open `page` from disk in headless chromium; (images that failed to load, images on the page)."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = BodyAttributes()
    body.feed(dom)
    probe.unlink()
    return json.loads(body.attributes["data-failed"]), int(body.attributes["data-images"])


class BodyAttributes(HTMLParser):
    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.attributes = dict(attrs)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_a_browser(digits_run, tmp_path):
    run_dir, _ = digits_run
    page = tmp_path / "report.html"
    shutil.copy(run_dir / "report.html", page)  # on its own: nothing next to it to fall back on
    failed, images = load_in_browser(page)
    assert failed == [] and images >= 6

    # the probe does catch a broken image
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img src="missing.png" data-file="missing.png"></body></html>')
    assert load_in_browser(broken) == (["missing.png"], 1)

    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01, "the screenshot is blank"


def test_tensorboard_logs_scalars(trainer, fixtures):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--epochs", "2",
                     "--bs", "8", "--arch", "resnet18", "--no-interpret", "--tensorboard")
    run_dir = run_dir_of(result)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "valid_loss", "error_rate", "lr_0", "mom_0"} <= tags
    steps = json.loads((run_dir / "config.json").read_text())["data"]["n_train"] // 8 * 2
    assert len(events.Scalars("lr_0")) >= steps  # every training step
    valid = [e.value for e in events.Scalars("valid_loss")]
    with open(run_dir / "metrics.csv", newline="") as f:
        assert valid == pytest.approx([float(r["valid_loss"]) for r in csv.DictReader(f)], rel=1e-4)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["options"]["tensorboard"] is True and config["options"]["interpret"] is False
    command = reproduce_command(config)
    assert "--no-interpret" in command and "--tensorboard" in command
    assert command in html_unescape((run_dir / "report.html").read_text())


def parsed(trainer, monkeypatch, command: str) -> FitConfig:
    """The FitConfig that the CLI builds from `command` (a `trainer fit` or `trainer lr-find` line), caught where
    it is handed to training: what the command would train with."""
    import shlex

    import trainer.training.distributed as distributed
    import trainer.training.fit as fit

    caught = []
    monkeypatch.setattr(fit, "fit", lambda cfg, *args, **kwargs: caught.append(cfg) or (None, None))
    monkeypatch.setattr(fit, "lr_find", lambda cfg, *args, **kwargs: caught.append(cfg) or (Path("x"), {"suggestions": {}}))
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv, cfg: caught.append(cfg) or 0)
    words = shlex.split(command)
    assert words[0] == "trainer"
    trainer(*words[1:])
    (cfg,) = caught
    return cfg


def assert_same_run(cfg: FitConfig, config: dict) -> None:
    """`cfg` resolves to the run's recorded options, except the machine's own (resolved where the command runs)."""
    from trainer.recipes import get_recipe

    again = cfg.resolve(get_recipe(cfg.recipe)).to_dict()
    recorded = FitConfig(**config["options"]).to_dict()
    if recorded["cache"] is True and again["cache"] is None:  # "on where it applies", and it applied
        again["cache"] = True
    for name in (*MACHINE_OPTIONS, "name"):  # the machine's, and the run's name (a repeat is a new run)
        again.pop(name), recorded.pop(name)
    assert again == recorded


def test_repeat_command_round_trips(trainer, digits_run, monkeypatch, tmp_path):
    """The report's command, parsed back by the CLI, trains with the run's own options: as the run recorded them,
    with every option changed, and for lr-find."""
    from dataclasses import fields

    run_dir, _ = digits_run
    config = json.loads((run_dir / "config.json").read_text())
    assert_same_run(parsed(trainer, monkeypatch, reproduce_command(config)), config)

    changed = dict(epochs=2, lr=0.003, bs=16, arch="resnet18", pretrained=True, weights=str(tmp_path / "w 1.pth"),
                   data=str(tmp_path / "my data"), data_sha256="ab" * 32, size=64, valid_pct=0.25, cache=False, opt="sgd", wd=0.05,
                   dropout=0.2, init="kaiming", early_stop=2, save_best=True, activation_stats=True, seed=7,
                   out=str(tmp_path / "elsewhere"), interpret=False, top_k=4, tensorboard=True, aug=True,
                   flip_vert=True, max_rotate=20.0, max_lighting=0.3, mixup=0.4, label_smoothing=0.1,
                   mlflow="http://127.0.0.1:5000", name="named")
    # refused for digits, so carried by test_options' relaunch round trip (folder) instead: min_scale (digits does
    # not crop) and the folder recipe's labelling options
    untested = {f.name for f in fields(FitConfig)} - {"recipe", "min_scale", *MACHINE_OPTIONS, *LABELLING} - {
        name for name, value in changed.items() if value != config["options"].get(name)}
    assert not untested, f"options the round trip does not change: {untested}"
    everything = {**config, "options": {**config["options"], **changed}, "distributed": {"world_size": 2}}
    command = reproduce_command(everything)
    assert "--nproc 2" in command and "--no-interpret" in command and "--top-k 4" in command
    assert "--name" not in command  # a repeat is a new run, with a name of its own
    assert_same_run(parsed(trainer, monkeypatch, command), everything)

    lr_find = {**config, "command": "lr-find",
               "options": {**config["options"], "bs": 16, "arch": "resnet18", "seed": 7, "cache": False}}
    command = reproduce_command(lr_find)
    assert command.startswith("trainer lr-find digits ") and "--epochs" not in command
    assert_same_run(parsed(trainer, monkeypatch, command), lr_find)
