# The two commands: `make demo` (run the pipeline on the bundled sample) and `make test` (the test suite).
# Both create .venv/ here on first use; nothing is installed outside it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CHECKOV := $(VENV)/tools/checkov/bin/checkov
# infra/constraints.txt pins torch to the CPU build for everything that pulls it in.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --constraint infra/constraints.txt
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# llama-cpp-python has no binary wheel for Linux on PyPI and compiles once (pip caches the wheel afterwards).
# LLAVA_BUILD=OFF skips the multimodal library we do not use; GGML_NATIVE=OFF builds for portable AVX2 instead of
# -march=native, which on CPUs with AMX (recent Xeons, also in VMs) produces a library that segfaults in decode.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test test-fast dev install install-dev clean

demo: install
	$(BIN)/persona-hub demo

# Test files run on TEST_WORKERS workers, each file whole on one (its module fixtures built once).
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The edit-test loop: no embedded-model runs, no real servers, no browser, nothing slow (markers: see
# persona_hub_dagster_tests/conftest.py).
FAST_TESTS := not llm and not servers and not browser and not aws and not e2e and not slow
test-fast: install-dev
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "$(FAST_TESTS)"

dev: install
	$(BIN)/persona-hub ui

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# setuptools warns on every editable install of a flat layout ("folders ... with the same name as your package may
# take precedence"): true of any checkout, nothing a user can act on, so not shown.
EDITABLE := PYTHONWARNINGS=ignore::UserWarning $(PIP_INSTALL) --editable

$(VENV)/.installed: pyproject.toml infra/constraints.txt | $(BIN)/python
	$(EDITABLE) .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(CHECKOV)
	$(EDITABLE) ".[dev]"
	touch $@

# checkov (the static IaC scan in test_infra_cdk.py) pins versions that conflict with the project's: its own venv.
$(CHECKOV): | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/tools/checkov/bin/python -m pip install --quiet checkov==3.3.30

# Local state only: the Dagster instance, the Delta tables, test artifacts. Keeps .venv.
clean:
	rm -rf .dagster_home .persona_hub .test-artifacts
