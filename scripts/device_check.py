"""Prove a machine: every path a user runs, on its GPU (or with --device cpu, on its CPU).

    scripts/device_check.sh                      # on a CUDA machine: the full check, about 5-8 minutes
    scripts/device_check.sh --device cpu         # the same steps on the CPU (fp16 is skipped: it needs a GPU)
    scripts/device_check.sh --device cpu --quick # the reduced form that tests/test_device_check.py runs

For each recipe (digits, and mnist_sample from ../shared/data/mnist_sample.tgz), decoded-image cache on
and off, and precision auto/fp16/fp32: fit, interpret, predict and evaluate (each checked against the
fit's own confusion matrix), lr-find; then a SIGTERM during epoch 2 and --resume, --nproc 1 through
torchrun (nccl on CUDA), and `trainer bench mnist_sample` rows trainer/reference/floor. One line per
check (PASS/FAIL/SKIP, what was measured), a closing "N passed, M failed" line, exit 1 if any failed.
Commands run in-process (fastai is imported once) except where a process boundary is the point.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Checks:
    def __init__(self):
        self.counts = Counter()

    def run(self, name: str, check, *args):
        """Run one check; it returns the figure to print, or raises (AssertionError: a failed check)."""
        start = time.perf_counter()
        try:
            figure = check(*args)
        except Skip as skip:
            self.report("SKIP", name, str(skip))
            return None
        except Exception as e:  # noqa: BLE001 - every failure is reported, and the run goes on
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if not isinstance(e, AssertionError):
                detail = f"{type(e).__name__}: {detail}"
                traceback.print_exc(file=sys.stderr)
            self.report("FAIL", name, detail[:300])
            return None
        self.report("PASS", name, f"{figure} ({time.perf_counter() - start:.1f} s)")
        return figure

    def report(self, status: str, name: str, detail: str):
        self.counts[status] += 1
        print(f"{status:4}  {name:<48}  {detail}", flush=True)


class Skip(Exception):
    pass


class Stopped(BaseException):
    """SIGTERM or SIGINT to the check: it stops at once (no check catches a BaseException)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


CHILDREN: list[subprocess.Popen] = []  # the trainer processes a check started, killed when the check is stopped


def stop(signum, frame):
    raise Stopped(signum)


def kill_children() -> None:
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli(*args) -> str:
    """`trainer ARGS` in this process; its stdout, or an AssertionError with its message."""
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # the signal reached trainer's own handler
        raise Stopped(result.exit_code - 128)
    assert result.exit_code == 0, f"trainer {' '.join(map(str, args[:2]))} exit {result.exit_code}: " \
                                  f"{(result.stderr or result.stdout).strip()[-300:]}"
    return result.stdout


def subprocess_trainer(*args, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)
    CHILDREN.append(proc)
    return proc


def confusion(run_dir: Path) -> dict:
    with open(run_dir / "confusion_matrix.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    return {(r[0], header[j]): int(r[j]) for r in rows for j in range(1, len(header)) if int(r[j])}


class Suite:
    def __init__(self, args, out: Path):
        self.args, self.out, self.checks = args, out, Checks()

    def data_of(self, recipe: str) -> tuple[str | None, Path]:
        """(--data value, the folder of labelled validation images) for a recipe."""
        if recipe == "digits":
            from trainer.data.source import locate
            from trainer.recipes import get_recipe

            root = locate(get_recipe("digits"), None)
            return None, root / "testing"
        archive = Path(self.args.shared_data) / f"{recipe}.tgz"
        if not archive.is_file():
            raise Skip(f"no {archive}")
        from trainer.data.source import locate
        from trainer.recipes import get_recipe

        return str(archive), locate(get_recipe(recipe), str(archive)) / "valid"

    def fit_options(self, recipe: str, data: str | None) -> list:
        return [recipe, *(["--data", data] if data else []), "--device", self.args.device, "--out", self.out,
                "--arch", self.args.arch, "--no-pretrained"]

    def fit(self, recipe, data, cache, precision) -> Path:
        if precision == "fp16" and self.args.device == "cpu":
            raise Skip("fp16 needs a GPU")
        stdout = cli("fit", *self.fit_options(recipe, data), "--epochs", self.args.epochs, "--quiet",
                     "--cache" if cache else "--no-cache", "--precision", precision)
        run_dir = Path(stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        final = summary["final"]
        error = final.get("error_rate", 1 - final.get("accuracy", 0))
        floor = {"digits": 0.5, "mnist_sample": 0.05}[recipe]  # well below chance (0.9 and 0.5)
        assert error <= floor, f"error {error:.4f} after {self.args.epochs} epochs (expected <= {floor})"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["device"]["name"].startswith(self.args.device), config["device"]
        self.fitted = run_dir
        return (f"error {error:.4f}, {summary['train_images_per_second']:.0f} img/s, {summary['device']} "
                f"{summary['precision']}, cache {'on' if config['options']['cache'] else 'off'}, "
                f"run {run_dir.name}")

    def interpret(self, run_dir: Path, trust_pickle: bool) -> str:
        trained = confusion(run_dir)
        cli("interpret", run_dir, "--device", self.args.device, *(["--trust-pickle"] if trust_pickle else []))
        assert confusion(run_dir) == trained, "the interpretation differs from the trained learner's"
        return f"{sum(trained.values())} validation images, same confusion matrix as the learner"

    def predict(self, run_dir: Path, valid: Path) -> str:
        rows = json.loads(cli("predict", run_dir, valid, "--json", "--device", self.args.device))
        counted = Counter((Path(r["path"]).parent.name, r["predictions"][0]["label"]) for r in rows)
        assert dict(counted) == confusion(run_dir), "predict's labels differ from the learner's"
        return f"{len(rows)} images, same labels as the learner"

    def evaluate(self, run_dir: Path, valid: Path) -> str:
        cli("evaluate", run_dir, "--data", valid, "--device", self.args.device)
        test = json.loads((run_dir / "test_metrics.json").read_text())
        trained = confusion(run_dir)  # the learner's own, in fp32 after training (validation ran under autocast)
        expected = sum(n for (actual, predicted), n in trained.items() if actual == predicted) / sum(trained.values())
        assert abs(test["accuracy"] - expected) < 1e-6, f"accuracy {test['accuracy']} vs the learner's {expected}"
        return f"accuracy {test['accuracy']:.4f} on {test['n']} images, as the learner's"

    def lr_find(self, recipe, data) -> str:
        stdout = cli("lr-find", *self.fit_options(recipe, data), "--num-it", 20, "--quiet")
        found = json.loads((Path(stdout.strip().splitlines()[-1]) / "lr_find.json").read_text())
        valley = found["suggestions"]["valley"]
        assert 1e-7 < valley < 10, f"valley {valley}"
        return f"valley {valley:.2e}"

    def signal_resume(self, recipe, data) -> str:
        """SIGTERM once epoch 1's checkpoint is written (so during epoch 2), then --resume to the end."""
        # Small batches on a GPU, so that epoch 2 lasts long enough for the signal to land inside it.
        epochs, bs = 3, 8 if self.args.device.startswith("cuda") else 64
        before = set((self.out / recipe).glob("2*"))
        proc = subprocess_trainer("fit", *self.fit_options(recipe, data), "--epochs", epochs, "--bs", bs,
                                  "--no-interpret", "--quiet")
        state = None
        while state is None:
            for run_dir in set((self.out / recipe).glob("2*")) - before:
                path = run_dir / "checkpoint.json"
                if path.is_file() and json.loads(path.read_text())["epochs_done"] >= 1:
                    state = path
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before its first checkpoint: "
                                     f"{proc.stderr.read().strip()[-300:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 143, f"exit {proc.returncode} after SIGTERM (143 expected): {stderr[-300:]}"
        run_dir = state.parent
        done = json.loads(state.read_text())["epochs_done"]
        cli("fit", "--resume", run_dir, "--no-interpret", "--quiet", "--device", self.args.device)
        with open(run_dir / "metrics.csv", newline="") as f:
            epochs_logged = [int(r["epoch"]) for r in csv.DictReader(f)]
        assert epochs_logged == list(range(1, epochs + 1)), f"metrics.csv epochs {epochs_logged}"
        return f"stopped after epoch {done} (exit 143), resumed to epoch {epochs}, every epoch once"

    def nproc(self, recipe, data) -> str:
        proc = subprocess_trainer("fit", *self.fit_options(recipe, data), "--epochs", 1, "--nproc", 1,
                                  "--no-interpret", "--quiet")
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"exit {proc.returncode}: {stderr.strip()[-300:]}"
        run_dir = Path(stdout.strip().splitlines()[-1])
        backend = json.loads((run_dir / "config.json").read_text())["distributed"]["backend"]
        expected = "nccl" if self.args.device.startswith("cuda") else "gloo"
        assert backend == expected, f"backend {backend}, expected {expected}"
        return f"torchrun, 1 process, {backend}"

    def service(self) -> str:
        """A real `trainer service` on this machine's devices runs a digits job to the end: the job gets the
        device (CUDA_VISIBLE_DEVICES), its events arrive on the stream, its run is whole."""
        import secrets

        from trainer.data.locations import data_root
        from trainer.data.source import locate
        from trainer.recipes import get_recipe
        from trainer.service.client import Client

        locate(get_recipe("digits"), None)  # written under the data root if it is not there yet
        token = secrets.token_urlsafe(24)
        state = self.out / "service"
        proc = subprocess_trainer("service", "--port", 0, "--devices", "auto" if self.args.device.startswith("cuda")
                                  else "cpu", "--state", state, "--runs", self.out / "service-runs", "--data-root",
                                  data_root(), env={**os.environ, "TRAINER_TOKEN": token})
        try:
            line = ""
            while not line.startswith("ready: "):
                line = proc.stdout.readline()
                assert line, f"the service ended: {proc.stderr.read().strip()[-300:]}"
            api = Client(line.split()[1], token)
            job = api.submit({"recipe": "digits", "options": {"epochs": 1, "arch": self.args.arch,
                                                              "pretrained": False, "interpret": False}})
            kinds = [event["kind"] for event in api.events(job["id"])]
            done = api.job(job["id"])
            assert done["state"] == "succeeded", f"job {done['state']}: {done['error']}"
            device = json.loads((Path(done["run_dir"]) / "config.json").read_text())["device"]["name"]
            expected = "cuda" if self.args.device.startswith("cuda") else "cpu"
            assert str(device).startswith(expected), f"the job trained on {device}, expected {expected}"
            assert kinds.count("epoch") == 1 and "finished" in kinds, kinds
            return f"job on {done['devices']} ({device}), {len(kinds)} events streamed"
        finally:
            proc.terminate()
            proc.wait(timeout=180)

    def bench(self) -> str:
        archive = Path(self.args.shared_data) / "mnist_sample.tgz"
        if not archive.is_file():
            raise Skip(f"no {archive}")
        from trainer.bench import run_bench

        result = run_bench("mnist_sample", str(archive), 1, self.args.device, 64, ("trainer", "reference", "floor"),
                           log=lambda _: None)
        rows = result["rows"]
        return ", ".join(f"{name} {row['images_per_s']:.0f} img/s" + (f" {row['wall_s']:.0f} s" if row["wall_s"] else "")
                         for name, row in rows.items()) + \
            "; " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items())

    def run(self) -> int:
        a, check = self.args, self.checks.run
        for recipe in a.recipes:
            try:
                data, valid = self.data_of(recipe)
            except Skip as skip:
                self.checks.report("SKIP", recipe, str(skip))
                continue
            for cache in a.cache:
                for precision in a.precision:
                    tag = f"{recipe} cache={'on' if cache else 'off'} {precision}"
                    self.fitted = None
                    check(f"{tag} fit", self.fit, recipe, data, cache, precision)
                    if self.fitted is None:
                        continue
                    check(f"{tag} interpret", self.interpret, self.fitted, False)
                    check(f"{tag} interpret --trust-pickle", self.interpret, self.fitted, True)
                    check(f"{tag} predict", self.predict, self.fitted, valid)
                    check(f"{tag} evaluate", self.evaluate, self.fitted, valid)
            check(f"{recipe} lr-find", self.lr_find, recipe, data)
            if not a.quick or recipe == a.recipes[0]:
                check(f"{recipe} SIGTERM in epoch 2, --resume", self.signal_resume, recipe, data)
                check(f"{recipe} --nproc 1 (torchrun)", self.nproc, recipe, data)
        if not a.quick or a.device.startswith("cuda"):
            check("trainer service: a job on this machine's devices", self.service)
        if not a.quick:
            check("bench mnist_sample --epochs 1", self.bench)
        c = self.checks.counts
        print(f"device check ({a.device}): {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped", flush=True)
        return 1 if c["FAIL"] or not c["PASS"] else 0


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/device_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="the reduced form: digits only, cache on, precision auto, resnet18, 3 epochs")
    parser.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"),
                        help="folder with mnist_sample.tgz (default: ../shared/data)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    import torch

    args.device = args.device or default_device()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    args.recipes = ["digits"] if args.quick else ["digits", "mnist_sample"]
    args.cache = [True] if args.quick else [True, False]
    args.precision = ["auto"] if args.quick else ["auto", "fp16", "fp32"]
    args.arch, args.epochs = ("resnet18", 3) if args.quick else ("resnet34", 2)
    os.environ.setdefault("MPLBACKEND", "Agg")
    print(f"device check on {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else "")
          + f", torch {torch.__version__}", flush=True)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
            out = args.out or Path(tmp)
            os.environ.setdefault("TRAINER_DATA", str(out / "datasets"))
            suite = Suite(args, out / "runs")
            try:
                return suite.run()
            except Stopped as stopped:  # under `timeout` or Ctrl-C: the whole check ends now, not only its step
                for s in previous:
                    signal.signal(s, signal.SIG_IGN)  # a second signal while stopping changes nothing
                kill_children()
                c = suite.checks.counts
                print(f"device check ({args.device}) stopped by {stopped}: {c['PASS']} passed, {c['FAIL']} failed "
                      f"before it; the running step was killed", flush=True)
                return 128 + stopped.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
