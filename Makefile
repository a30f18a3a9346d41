# gathering-cache: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Dependency groups (pyproject.toml [dependency-groups]) installed into $(VENV).
GROUPS ?= dev
# Every Python the package supports; `make test-matrix` runs the suite on each one found.
MATRIX ?= 3.10 3.11 3.12 3.13
# The oldest supported Python: the lowest dependency versions are tested on it, since it is
# the one their (older) wheels were built for.
LOWEST_PYTHON ?= 3.10

.PHONY: install demo test test-unit test-integration test-matrix test-lowest lint format \
	typecheck examples docs screenshot bench bench-quick bench-ab clean

# `pip install --group` needs pip >= 25.1, hence the upgrade first.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e ".[cli,metrics]" $(foreach g,$(GROUPS),--group $(g))
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev tools

demo: $(STAMP) ## run the demo: on Redis if one answers (REDIS_URL or localhost:6379), else in-process
	$(PY) examples/demo.py

# The suite runs under coverage ([tool.coverage.*] in pyproject.toml), branches and every Python
# process the tests start included: each writes a data file, combined into .coverage (gitignored);
# the report lists the files not fully covered and fails under the floor (fail_under).
# `$(PY) -m coverage report -m` or `$(PY) -m coverage html` afterwards shows the lines missed.
# The fault tests run untraced: they time calls against bounds of the operation timeout and
# write the figures of docs/reliability.md (build/reliability.json), and a tracer slows the
# client about threefold (the burst of 2,000 callers then overruns its 0.5 s budget). The rest of
# the suite reaches every line they reach: the total is the same with or without them.
UNTRACED := tests/test_faults.py

test: lint typecheck ## lint, type-check, then every test (unit + integration on a real redis-server) under coverage (fault tests untraced), with a floor
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest $(addprefix --ignore=,$(UNTRACED))
	$(PY) -m pytest $(UNTRACED)
	$(PY) -m coverage combine --quiet
	$(PY) -m coverage report

test-unit: $(STAMP) ## tests on the memory backend and fakeredis only
	$(PY) -m pytest -m "not integration"

test-integration: $(STAMP) ## tests against real redis-server processes
	$(PY) -m pytest -m integration

# Each interpreter gets its own .venv-3.X (installed once, reinstalled when pyproject.toml
# changes); an interpreter that is absent is skipped with a message, a failure fails the target
# after every interpreter has run.
test-matrix: test ## `make test`, then every test on each other Python in $(MATRIX) found here
	@default=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	failed=""; \
	for v in $(MATRIX); do \
		if [ "$$v" = "$$default" ]; then echo "== Python $$v: the default interpreter, tested by make test"; continue; fi; \
		py=$$(.ci/find-python $$v) || { echo "== Python $$v: not found on this machine, skipped"; continue; }; \
		echo "== Python $$v ($$py)"; \
		$(MAKE) --no-print-directory install VENV=.venv-$$v PYTHON=$$py GROUPS=test \
			&& .venv-$$v/bin/python -m pytest -q \
			|| failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix: failed on Python$$failed"; exit 1; fi

# Every direct dependency (and the numpy extra) pinned to the floor pyproject.toml allows,
# on the oldest supported Python; the test tools resolve around those pins.
test-lowest: ## every test with each dependency at the lowest version pyproject.toml allows
	@py=$$(.ci/find-python $(LOWEST_PYTHON)) || { echo "test-lowest: Python $(LOWEST_PYTHON) not found"; exit 1; }; \
	$(MAKE) --no-print-directory .venv-lowest/.installed PYTHON=$$py
	.venv-lowest/bin/python -m pip list --format=freeze | grep -iE '^(redis|hiredis|pydantic|pydantic.settings|orjson|httpx|async.timeout|typing.extensions|numpy)=='
	.venv-lowest/bin/python -m pytest -q

.venv-lowest/.installed: pyproject.toml .ci/lowest-constraints.py
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install --quiet --upgrade "pip>=25.1"
	.venv-lowest/bin/python .ci/lowest-constraints.py > .venv-lowest/constraints.txt
	.venv-lowest/bin/python -m pip install --quiet -c .venv-lowest/constraints.txt \
		-e ".[numpy]" --group test
	touch $@

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

screenshot: $(STAMP) ## refresh docs/images/dashboard.png from the dashboard's browser test
	UPDATE_SCREENSHOT=1 $(PY) -m pytest tests/test_dashboard.py -k real_browser

docs: $(STAMP) ## run every python snippet of README.md and docs/*.md (memory backend and real Redis)
	$(PY) -m pytest tests/test_docs.py

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e . --group dev --group bench
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## full benchmark (< 5 min): tables, JSON and chart in docs/benchmarks/
	$(PY) -m bench.run

bench-quick: $(BENCH_STAMP) ## short benchmark (< 1 min)
	$(PY) -m bench.run --quick

# REF: the git ref to compare the working tree with (W1/W2 ratios to raw, alternating rounds).
REF ?= HEAD~1
bench-ab: $(BENCH_STAMP) ## before/after of the hot path: `make bench-ab REF=<git ref>` (2-4 min)
	$(PY) -m bench.ab --before-ref $(REF)

clean:
	rm -rf $(VENV) .venv-3.* .venv-lowest .pytest_cache .mypy_cache .ruff_cache *.egg-info \
		.coverage .coverage.* htmlcov
