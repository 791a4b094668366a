# make demo: the whole story offline on a CPU.  make test: the test suite.
# Both create .venv when it is missing and install the project with its test extras first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.scaledown-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-all lint format install clean help

help:
	@echo "make install - create .venv when missing and install the project with its test extras"
	@echo "make demo   - size ladder -> scaling fit -> teacher -> distilled student -> report, offline on CPU"
	@echo "make test   - lint (ruff) and the fast tests, two pytest workers (under 5 minutes on 2 cores)"
	@echo "make test-slow - the tests marked slow (multi-process, kill -9, end to end), two workers"
	@echo "make test-all  - both: what CI runs"
	@echo "make lint   - ruff check and ruff format --check"
	@echo "make format - ruff format and ruff check --fix"
	@echo "make clean  - remove runs/ and the virtual environment"

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, so that the project's unpinned requirement does not pull a multi-GB CUDA
	@# build on a machine without a GPU: a local CPU wheel if pip knows one, else the CPU index.
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	  elif $(BIN)/pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null; then \
	    $(BIN)/pip install -q "torch==2.13.0"; \
	  else $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu; fi; fi
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaledown run --config recipes/pipeline/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two pytest workers, one torch thread each (tests/conftest.py); a test file stays on one worker, so its
# module fixtures are built once. `pytest` with no options still runs every test in one process.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --timeout=900 --durations=15

test: lint
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: test test-slow

clean:
	rm -rf runs $(VENV)
