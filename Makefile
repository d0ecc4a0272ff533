# closecast: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/closecast run --source sample

test: install
	$(BIN)/python -m pytest

# The pure tests, without the `slow` ones (servers, flow runs, subprocesses): the loop
# while editing, ~610 tests in ~40 s (under a minute with start-up) on 2 cores (one process: workers would each import
# torch, MLflow and Prefect again). `make test` still runs everything.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n 0

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .closecast .pytest_cache .ruff_cache .mypy_cache
