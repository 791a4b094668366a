# make demo: the whole story offline on a CPU.  make test: the test suite.
# Both create .venv when it is missing and install the project with its test extras first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.scaledown-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint format install clean help

help:
	@echo "make install - create .venv when missing and install the project with its test extras"
	@echo "make demo   - size ladder -> scaling fit -> teacher -> distilled student -> report, offline on CPU"
	@echo "make test   - lint (ruff) and run the test suite (pytest)"
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

test: lint
	$(BIN)/python -m pytest -q --timeout=900 --durations=25

clean:
	rm -rf runs $(VENV)
