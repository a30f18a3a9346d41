# gathering-cache: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration lint format typecheck examples bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev tools

demo: $(STAMP) ## run the demo: on Redis if one answers (REDIS_URL or localhost:6379), else in-process
	$(PY) examples/demo.py

test: lint typecheck ## lint, type-check, then every test (unit + integration on a real redis-server)
	$(PY) -m pytest

test-unit: $(STAMP) ## tests on the memory backend and fakeredis only
	$(PY) -m pytest -m "not integration"

test-integration: $(STAMP) ## tests against real redis-server processes
	$(PY) -m pytest -m integration

lint: $(STAMP)
	$(PY) -m ruff check gathering_cache tests examples bench
	$(PY) -m ruff format --check gathering_cache tests examples bench

format: $(STAMP)
	$(PY) -m ruff format gathering_cache tests examples bench
	$(PY) -m ruff check --fix gathering_cache tests examples bench

typecheck: $(STAMP)
	$(PY) -m mypy

examples: $(STAMP) ## run every example (memory backend and real Redis)
	$(PY) -m pytest tests/test_examples.py

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## full benchmark (< 5 min): tables, JSON and chart in docs/benchmarks/
	$(PY) -m bench.run

bench-quick: $(BENCH_STAMP) ## short benchmark (< 1 min)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
