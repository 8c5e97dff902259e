# hpcagent: the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lint test test-unit slurm-up slurm-down gridengine-up gridengine-down docker-up browser demo bench chaos clean help cluster-up cluster-down cluster-test

help:
	@echo "make demo    install, then run an example task end to end on the embedded server"
	@echo "make test    install, start the local one-host Slurm and Grid Engine, run lint and every test"
	@echo "make lint    ruff + mypy --strict + lint-imports (the layering of docs/structure.md)"
	@echo "make bench   run the benchmarks and print their figures"
	@echo "make chaos   the fault suite: kill -9, SIGSTOP, a full disk, slurmctld/slurmdbd of a private Slurm stopped 120 s, hostile task records (root; CHAOS_ARGS='--seed N --tasks N --slurm-outage S')"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]' uv
	touch $(STAMP)

# The editable install leaves hpcagent's own modules uncompiled, and under
# PYTHONDONTWRITEBYTECODE every job's `hpcagent execute` would compile them again (~1 s of CPU;
# docs/performance.md): compile them here, at each make (quick when up to date).
install: $(STAMP)
	$(PY) -m compileall -q hpcagent

lint: install
	$(VENV)/bin/ruff check hpcagent tests benchmarks examples
	$(VENV)/bin/ruff format --check hpcagent tests benchmarks examples
	$(VENV)/bin/mypy hpcagent
	$(VENV)/bin/lint-imports

slurm-up:
	bash tests/slurm/cluster.sh up

slurm-down:
	bash tests/slurm/cluster.sh down

gridengine-up:
	bash tests/gridengine/cell.sh up

gridengine-down:
	bash tests/gridengine/cell.sh down

# The Docker engine for Docker mode and `hpcagent build` (installs docker.io and starts dockerd
# as root when missing; idempotent).
docker-up:
	bash docker/engine.sh

# Debian's chromium + chromium-driver for the web UI's browser tests (tests/ui)
browser:
	bash tests/ui/install-browser.sh

test-unit: install
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test: install lint slurm-up gridengine-up docker-up browser
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) examples/demo.py

bench: install
	for b in benchmarks/*_bench.py; do $(PY) $$b || exit 1; done

# The fault suite in full (make test runs its short form, tests/e2e/test_chaos.py).
chaos: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) tests/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info

# docker compose Slurm test cluster (docker/slurm-cluster, docs/cluster.md)
cluster-up: install
	PYTHON="$(CURDIR)/$(PY)" bash docker/slurm-cluster/cluster.sh up

cluster-down:
	bash docker/slurm-cluster/cluster.sh down

cluster-test: install
	$(PY) tests/cluster/run_cluster_test.py
