"""The optional extras (pyproject's optional-dependencies): one check, one message.

`has(extra)` asks without importing anything; `require(extra, what)` imports the extra's modules and
raises BadInput naming the first one that fails and the pip command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from trainer.errors import BadInput

# extra -> (its modules as imported, checked in this order; what an import failure says of the module)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "export": (("onnx", "onnxruntime", "onnxscript"), "is missing"),
    # python_multipart is the module's name from python-multipart 0.0.13 on: older ones are "too old"
    "serve": (("fastapi", "python_multipart", "uvicorn"), "is missing or too old"),
    "service": (("fastapi", "uvicorn", "sqlalchemy", "jinja2", "alembic"), "is missing or too old"),
    "postgres": (("psycopg",), "is missing"),
    "tensorboard": (("tensorboard",), "is missing"),
    "timm": (("timm",), "is missing"),
    "mlflow": (("mlflow",), "is missing"),
    "ray": (("ray",), "is missing"),  # trainer service --backend ray
}


def _modules(extra: str) -> tuple[tuple[str, ...], str]:
    try:
        return EXTRAS[extra]
    except KeyError:
        raise ValueError(f"unknown extra '{extra}'; known: {', '.join(EXTRAS)}") from None


def _found(module: str) -> bool:
    if module in sys.modules:  # imported already, or blocked (None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def has(extra: str) -> bool:
    """Whether every module of `extra` is installed (found, not imported)."""
    return all(_found(module) for module in _modules(extra)[0])


def require(extra: str, what: str) -> None:
    """BadInput, one line, unless every module of `extra` imports: `what` needs the extra, and how to get it."""
    modules, failure = _modules(extra)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:  # e.name: the module that failed, perhaps one the extra's module needs
            raise BadInput(f"{what} needs the {extra} extra ({e.name or module} {failure}): "
                           f"pip install 'trainer[{extra}]'") from None
