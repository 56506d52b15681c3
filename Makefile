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

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
