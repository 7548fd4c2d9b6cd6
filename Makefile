# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean

$(BIN)/ptychograph: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,dev]"
	touch $(BIN)/ptychograph

setup: $(BIN)/ptychograph

demo: setup
	$(BIN)/ptychograph demo --out demo-output

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check ptychograph tests benchmarks
	$(BIN)/ruff format --check ptychograph tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-output
