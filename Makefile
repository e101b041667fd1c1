# `make test` and `make bench` each set up their own virtual environment;
# a stamp file reinstalls only when the package metadata changes, or when
# hybrid_queue/ gains, loses or renames a module (the editable install is in
# setuptools' strict mode, set in setup.cfg: it links each module, so that
# type checkers find the package; a directory's time changes with its entries).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_TEST := $(VENV)/.stamp-test
STAMP_BENCH := $(VENV)/.stamp-bench
PYTEST_ARGS ?=

.PHONY: test lint dist docs soak reliability bench bench-full clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The test environment has the bench extra too: the suite runs a quick
# benchmark pass so the benchmarks cannot rot; and the docs extra, since
# `make test` builds the documentation site.
$(STAMP_TEST): $(BIN)/python setup.cfg pyproject.toml hybrid_queue
	$(BIN)/pip install --quiet -e '.[test,bench,docs]'
	touch $@

$(STAMP_BENCH): $(BIN)/python setup.cfg pyproject.toml hybrid_queue
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

LINTED := hybrid_queue tests benchmarks tools examples

# tests/typing is the typing test: right calls must type-check, wrong ones be rejected.
lint: $(STAMP_TEST)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy hybrid_queue benchmarks examples
	$(BIN)/mypy tests/typing

# The core rules run again under asyncio's debug mode (slow callbacks, never
# awaited coroutines, calls from the wrong thread); the memory tests, which
# push 200,000-task bursts, only once.
DEBUG_TESTS := tests/test_priority.py tests/test_concurrency.py tests/test_tasks.py tests/test_retries.py \
	tests/test_cancellation.py tests/test_timeouts.py tests/test_results.py tests/test_shutdown.py tests/test_nesting.py \
	tests/test_delayed.py tests/test_keys.py tests/test_periodic.py tests/test_aging.py

# Every async test runs on the asyncio loop and on uvloop (see tests/conftest.py).
test: $(STAMP_TEST) lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest -m "not slow and not memory" -q $(DEBUG_TESTS) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory dist
	$(MAKE) --no-print-directory docs

# The documentation site (mkdocs.yml, docs/) into site/. --strict turns every
# warning into a failure: a broken link, a reference mkdocstrings cannot
# resolve, a page missing from the nav. The benchmark tables are made from
# docs/data/bench.json during the build, by the hook tools/bench_tables.py.
# NO_MKDOCS_2_WARNING silences the theme's banner about its end of support.
docs: $(STAMP_TEST)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Builds the sdist and, from it, the wheel, in an isolated environment with
# the build requirements of pyproject.toml (from PyPI, as a release build
# would), then installs the wheel alone into a fresh virtual environment and
# checks that it imports, ships py.typed, and that its metadata version is
# hybrid_queue.__version__. The import runs outside the source tree, so it
# can only find the installed copy.
dist: $(STAMP_TEST)
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BIN)/python -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet --no-index --no-deps dist/*.whl && \
	cd "$$tmp" && "$$tmp/venv/bin/python" -c "$$DIST_CHECK"

define DIST_CHECK
import importlib.metadata, importlib.resources, hybrid_queue
installed = importlib.metadata.version("hybrid_queue")
assert installed == hybrid_queue.__version__, (installed, hybrid_queue.__version__)
assert importlib.resources.files("hybrid_queue").joinpath("py.typed").is_file(), "py.typed missing"
print("installed wheel: hybrid_queue", hybrid_queue.__version__, "from", hybrid_queue.__file__)
endef
export DIST_CHECK

soak: $(STAMP_TEST)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Runs the reliability suites and rewrites RELIABILITY.md from their counts
# (SLOW=1 includes the long variants).
reliability: $(STAMP_TEST)
	$(BIN)/python tools/reliability.py $(if $(SLOW),--slow,)

# The main run: about 2.5 minutes on 2 cores (one loop kind, 5 rounds of 50,000
# tasks, 10^5 soaks; no scale_out). bench-full: every group, both loop kinds,
# 10^6 soaks and depths, 15 minutes or more. Both pass BENCH_ARGS on.
bench: $(STAMP_BENCH)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-full: $(STAMP_BENCH)
	$(BIN)/python -m benchmarks --full $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
