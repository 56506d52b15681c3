"""The optional extras (trainer/extras.py): pyproject's table, found without importing, one message each."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import one_line_error, run_python

from trainer import extras
from trainer.errors import BadInput

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_table_names_every_extra_of_pyproject():
    optional = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) == set(optional) - {"test"}
    for extra, (modules, _) in extras.EXTRAS.items():
        packages = {re.split(r"[\[<>=]", requirement)[0].replace("-", "_") for requirement in optional[extra]}
        assert set(modules) == packages, extra


def test_has_finds_without_importing():
    code = "import sys; from trainer.extras import has; print(has('tensorboard'), has('timm'), 'timm' in sys.modules)"
    result = run_python(code)
    assert result.stdout.split() == ["True", "True", "False"], result.stderr


def test_has_sees_a_module_that_is_not_there(monkeypatch):
    assert extras.has("export")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert not extras.has("export")
    with pytest.raises(ValueError, match="unknown extra 'onnx'"):
        extras.has("onnx")


@pytest.mark.parametrize("extra, what, missing, message", [
    ("serve", "trainer serve", "fastapi",
     "trainer serve needs the serve extra (fastapi is missing or too old): pip install 'trainer[serve]'"),
    ("export", "--format onnx", "onnxruntime",
     "--format onnx needs the export extra (onnxruntime is missing): pip install 'trainer[export]'"),
    ("tensorboard", "--tensorboard", "tensorboard",
     "--tensorboard needs the tensorboard extra (tensorboard is missing): pip install 'trainer[tensorboard]'"),
    ("mlflow", "--mlflow", "mlflow",
     "--mlflow needs the mlflow extra (mlflow is missing): pip install 'trainer[mlflow]'"),
    ("ray", "trainer service --backend ray", "ray",
     "trainer service --backend ray needs the ray extra (ray is missing): pip install 'trainer[ray]'"),
])
def test_require_names_the_missing_module_and_the_pip_command(extra, what, missing, message, monkeypatch):
    extras.require(extra, what)  # installed here: nothing raised
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(BadInput) as raised:
        extras.require(extra, what)
    assert str(raised.value) == message


def test_export_and_serve_say_so_before_loading_the_model(trainer, isolated, monkeypatch):
    run_dir = isolated / "runs" / "digits" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "model.safetensors").write_bytes(b"")  # never read: the extra is checked first
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert one_line_error(trainer("export", run_dir, "--format", "onnx", expect=2)) == (
        "error: --format onnx needs the export extra (onnx is missing): pip install 'trainer[export]'")
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.safetensors"]
    monkeypatch.setitem(sys.modules, "python_multipart", None)
    assert one_line_error(trainer("serve", run_dir, expect=2)) == (
        "error: trainer serve needs the serve extra (python_multipart is missing or too old): "
        "pip install 'trainer[serve]'")
