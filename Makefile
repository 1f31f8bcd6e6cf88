# One entry point per task, for people and for .ci/run alike.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install lint format typecheck test test-unit chaos bench demo broker-start broker-stop clean

install: $(STAMP)  ## virtual environment with streamscore and its dev tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

lint: install  ## ruff (lint and format check) and the import layers of ARCHITECTURE.md
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-logo --no-cache

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: install  ## mypy strict on the packages
	$(PY) -m mypy

test: install  ## every test, the real-broker ones and the fast fault scenarios included (the suite starts its own brokers)
	$(PY) -m pytest

test-unit: install  ## only the tests that need no broker
	$(PY) -m pytest -m "not kafka"

chaos: install  ## every fault scenario at full size on a local 3-node cluster (about 30 min); prints the checker's table
	$(PY) -m pytest tests/chaos -m chaos --chaos=full

bench: install  ## benchmark on the local broker; writes bench/results.json
	$(PY) -m bench

demo: install  ## the main job end to end on the local broker
	$(PY) -m demo

broker-start: install  ## a local Kafka broker on 127.0.0.1:9092 (data in .kafka/)
	$(VENV)/bin/streamscore broker start

broker-stop: install
	$(VENV)/bin/streamscore broker stop

clean:  ## remove the environment, caches, demo output and the local broker's data and jars
	-$(VENV)/bin/streamscore broker stop 2>/dev/null
	rm -rf $(VENV) .kafka .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info bench/results.json
