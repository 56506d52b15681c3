"""scripts/device_check.sh, the script that proves a GPU machine, in its reduced form on the CPU, so it cannot rot."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

# Run alone, after the parallel part of `make test` (pyproject.toml's `serial` marker): its
# SIGTERM/--resume and torchrun steps are the distributed tests' again.
pytestmark = pytest.mark.serial

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPTS / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wrapper_runs_the_check():
    result = subprocess.run([SCRIPTS / "device_check.sh", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--quick" in result.stdout and "--device" in result.stdout


def test_quick_device_check_on_the_cpu(isolated, capsys):
    """Every step of the check (fit, interpret with and without pickle, predict, evaluate, lr-find, SIGTERM and
    --resume, --nproc 1 through torchrun) passes on the CPU, one line each, and the script exits 0."""
    code = load_device_check().main(["--device", "cpu", "--quick", "--out", str(isolated / "check")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert code == 0, out
    steps = [re.split(r"\s{2,}", line)[1] for line in lines]
    assert steps == ["digits cache=on auto fit", "digits cache=on auto interpret",
                     "digits cache=on auto interpret --trust-pickle", "digits cache=on auto predict",
                     "digits cache=on auto evaluate", "digits lr-find", "digits SIGTERM in epoch 2, --resume",
                     "digits --nproc 1 (torchrun)"], out
    assert all(line.startswith("PASS") for line in lines), out
    assert f"device check (cpu): {len(lines)} passed, 0 failed, 0 skipped" in out


def test_a_failing_check_fails_the_script(isolated, capsys, monkeypatch):
    """A check that finds a wrong number is a FAIL line and exit 1, and the other checks still run."""
    module = load_device_check()

    def broken_fit(self, *args):
        raise AssertionError("error 0.9000 after 3 epochs (expected <= 0.5)")

    monkeypatch.setattr(module.Suite, "fit", broken_fit)
    monkeypatch.setattr(module.Suite, "signal_resume", lambda self, *a: "skipped here")
    monkeypatch.setattr(module.Suite, "nproc", lambda self, *a: "skipped here")
    monkeypatch.setattr(module.Suite, "lr_find", lambda self, *a: "skipped here")
    assert module.main(["--device", "cpu", "--quick", "--out", str(isolated / "check")]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+digits cache=on auto fit\s+error 0.9000", out, re.M)
    assert "device check (cpu): 3 passed, 1 failed, 0 skipped" in out


def test_sigterm_stops_the_whole_check(isolated):
    """Under `timeout` the check gets SIGTERM: it kills the step under way and exits 143 at once, instead of
    recording the step's exit 143 as a failure and going on with the next checks."""
    import os
    import signal
    import sys

    from helpers import Process

    env = {**os.environ, "PYTHONPATH": str(SCRIPTS.parent)}
    check = Process([sys.executable, SCRIPTS / "device_check.py", "--device", "cpu", "--quick",
                     "--out", isolated / "check"], env=env)
    try:
        first = check.wait_for("  digits ", timeout=1500)  # the first check line: the check is under way
        assert first[:4] in ("PASS", "FAIL", "SKIP"), first
        check.popen.send_signal(signal.SIGTERM)
        check.popen.wait(timeout=60)  # promptly: not after the remaining checks
        out, _ = check.finish()
    finally:
        check.stop()
    assert check.popen.returncode == 143, out
    after = out.split(first, 1)[1].splitlines()
    assert not [line for line in after if line[:4] in ("PASS", "FAIL", "SKIP")], out
    assert "stopped by SIGTERM" in out and "Traceback" not in out, out
