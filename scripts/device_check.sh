#!/usr/bin/env bash
# The one script that proves a machine: every path a user runs, on its GPU (or --device cpu).
# Usage: scripts/device_check.sh [--device cuda|cpu] [--quick] [--shared-data DIR] [--out DIR]
# One line per check (PASS/FAIL/SKIP and the figure); exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
elif python3 -c "import fastai, torch, typer, safetensors, accelerate" 2>/dev/null; then
    py=python3  # a machine that has the stack but no project venv (and perhaps no package index)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    make setup >&2
    py=.venv/bin/python
fi
exec "$py" scripts/device_check.py "$@"
