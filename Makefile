# `make digits` and `make test` each set up .venv first (pip + venv; torch comes from pip).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup digits test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

digits: setup
	$(BIN)/trainer fit digits

# Two xdist workers (one OpenMP thread each: tests/conftest.py), a test file each at a time; then the `serial`
# tests alone. Plain `pytest` runs everything in one process.
test: setup
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

clean:
	rm -rf $(VENV) runs .pytest_cache
