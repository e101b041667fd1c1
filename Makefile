# `make test` and `make bench` each set up their own virtual environment;
# a stamp file reinstalls only when the package metadata changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_TEST := $(VENV)/.stamp-test
STAMP_BENCH := $(VENV)/.stamp-bench
PYTEST_ARGS ?=

.PHONY: test lint soak reliability bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The test environment has the bench extra too: the suite runs a quick
# benchmark pass so the benchmarks cannot rot.
$(STAMP_TEST): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

$(STAMP_BENCH): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

LINTED := hybrid_queue tests benchmarks tools

lint: $(STAMP_TEST)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy hybrid_queue benchmarks

test: $(STAMP_TEST) lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest -m "not slow" -q tests/test_core.py $(PYTEST_ARGS)

soak: $(STAMP_TEST)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Runs the reliability suites and rewrites RELIABILITY.md from their counts
# (SLOW=1 includes the long variants).
reliability: $(STAMP_TEST)
	$(BIN)/python tools/reliability.py $(if $(SLOW),--slow,)

bench: $(STAMP_BENCH)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
