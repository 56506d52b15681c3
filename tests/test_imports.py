"""Import rules: the light modules and commands load no torch/fastai, and every module imports without fcntl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_python

import trainer

HEAVY = ("torch", "fastai", "torchvision", "matplotlib", "mlflow", "ray")
LIGHT = ["trainer", "trainer.cli", "trainer.config", "trainer.recipes", "trainer.errors", "trainer.extras",
         "trainer.files", "trainer.runs", "trainer.runs.rundir", "trainer.runs.store", "trainer.runs.listing",
         "trainer.runs.split", "trainer.runs.report", "trainer.data", "trainer.data.locations", "trainer.data.source",
         # the service answers from its store and starts jobs as processes: it never loads torch itself
         "trainer.service.store", "trainer.service.jobs", "trainer.service.runner", "trainer.service.app",
         "trainer.service.main", "trainer.service.client", "trainer.service.datasets",
         "trainer.service.versions", "trainer.service.losses", "trainer.service.tasks", "trainer.service.pages",
         "trainer.service.migrations", "trainer.service.backends", "trainer.service.backends.local",
         "trainer.service.backends.ray_cluster"]  # Ray only once the service joins a cluster
PACKAGE = Path(trainer.__file__).parent


def python(code: str) -> str:
    """The last line `code` prints, run as run_python runs it."""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_nothing_heavy(module):
    loaded = python(f"import {module}, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded == "[]", f"importing {module} loads {loaded}: import those inside the function that needs them"


@pytest.mark.parametrize("args, shows", [(["--help"], "datasets"), (["runs", "--help"], "show"),
                                         (["datasets"], "digits"), (["jobs", "--help"], "follow"),
                                         (["submit", "--help"], "--data-name")])
def test_light_commands_import_nothing_heavy(args, shows, isolated):
    code = (f"import json, sys\nfrom trainer.cli import app\n"
            f"try:\n    app({args!r}, prog_name='trainer')\nexcept SystemExit as e:\n    code = e.code\n"
            f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    result = run_python(code)
    *output, last = result.stdout.strip().splitlines()
    assert json.loads(last) == [0, []], f"trainer {' '.join(args)}: {last}\n{result.stderr}"
    assert shows in "\n".join(output)  # the command ran


def test_every_module_imports_without_fcntl():
    """fcntl exists on POSIX only: no module may need it (Windows)."""
    code = ("import sys\nsys.modules['fcntl'] = None\n"
            "import importlib, json, pkgutil, warnings, trainer\n"
            "warnings.simplefilter('ignore')\n"
            "names, failed = [], {}\n"
            "for m in pkgutil.walk_packages(trainer.__path__, 'trainer.'):\n"
            "    if m.name == 'trainer.__main__':\n        continue  # importing it runs the CLI\n"
            "    names.append(m.name)\n"
            "    try:\n        importlib.import_module(m.name)\n"
            "    except Exception as e:\n        failed[m.name] = repr(e)\n"
            "print(json.dumps([names, failed]))")
    names, failed = json.loads(python(code))
    assert failed == {}
    assert {"trainer.cli", "trainer.data.source", "trainer.training.fit", "trainer.serving.server"} <= set(names)


def test_no_module_uses_posix_only_calls():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30
    found = [f"{path.relative_to(PACKAGE.parent)}: {word}" for path in sources for word in ("os.getuid", "import fcntl")
             if word in path.read_text()]
    assert found == []
