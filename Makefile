# minicontainer: the two commands of the README.
#
#   make lab    install what is missing, then open the notebooks in JupyterLab
#   make test   install what is missing, then run the tests and every notebook (nbval)
#
# Other targets: setup, test-notebook NB=notebooks/01_namespaces.ipynb, lint, clean.
# Every step is idempotent: a second `make setup` checks, finds nothing to do and
# installs nothing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON       ?= python3
VENV         := .venv
BIN          := $(VENV)/bin
STAMP        := $(VENV)/.installed
PIP_FLAGS    ?= --disable-pip-version-check
JUPYTER_ARGS ?=
NB           ?=

# JupyterLab refuses to start as root unless told to.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# nbval 0.11: strict output comparison (--nbval), the venv's own kernel, a per-cell
# timeout, and regex sanitizers (the root conftest.py makes the path absolute).
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-cell-timeout=600 \
               --nbval-sanitize-with tests/nbval-sanitize.cfg
PYTEST_FLAGS := $(NBVAL_FLAGS) -p no:cacheprovider -ra

# The README's test command (`make test` runs exactly this; `make print-test-cmd`
# shows it). `notebooks` is dropped only while that directory does not exist.
TEST_CMD := $(BIN)/python -m pytest tests notebooks $(PYTEST_FLAGS)
RUN_TEST_CMD := $(BIN)/python -m pytest tests $(wildcard notebooks) $(PYTEST_FLAGS)

.PHONY: help lab setup system-deps system-deps-lab venv images test test-notebook lint clean print-test-cmd

help:
	@echo "make lab      set up (system packages, .venv, base images), then start JupyterLab"
	@echo "              (JUPYTER_ARGS='--no-browser --ip=0.0.0.0' to pass options)"
	@echo "make test     set up, then run the tests and every notebook with nbval"
	@echo "make test-notebook NB=notebooks/01_namespaces.ipynb   one notebook only"
	@echo "make setup    only the setup steps; make lint; make clean (keeps the image store)"

## make lab: the README's first command. Installs what the notebooks use (not the
## tools only the tests compare with: `make setup` or `make test` add those).
lab: system-deps-lab venv images
	exec $(BIN)/jupyter lab notebooks/ $(ALLOW_ROOT) $(JUPYTER_ARGS)

## make setup = system packages (all of scripts/system-deps.sh) + .venv + base images.
setup: system-deps venv images

system-deps:
	@PYTHON='$(PYTHON)' VENV='$(VENV)' bash scripts/system-deps.sh

system-deps-lab:
	@PYTHON='$(PYTHON)' VENV='$(VENV)' bash scripts/system-deps.sh --lab

venv: $(STAMP)

# Re-done only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	@if ! $(BIN)/python -c '' 2>/dev/null; then \
	    echo "+ $(PYTHON) -m venv $(VENV)"; \
	    rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install $(PIP_FLAGS) --config-settings editable_mode=compat -e '.[notebooks,network,test]'
	$(BIN)/python -m compileall -q minicontainer >/dev/null
	@touch $@

# Idempotent, and fast once the images are there.
images: venv
	$(BIN)/minicontainer bootstrap

## make test: the README's second command. The services the tests need (dockerd)
## are started when not running and stopped again afterwards (scripts/with-services.sh).
test: setup
	bash scripts/with-services.sh $(RUN_TEST_CMD)

test-notebook: setup
	@test -n '$(NB)' || { echo 'usage: make test-notebook NB=notebooks/01_namespaces.ipynb' >&2; exit 2; }
	bash scripts/with-services.sh $(BIN)/python -m pytest '$(NB)' $(PYTEST_FLAGS)

lint: venv
	$(BIN)/ruff check minicontainer tests conftest.py
	$(BIN)/ruff format --check minicontainer tests conftest.py

print-test-cmd:
	@echo '$(TEST_CMD)'

# Removes the venv and caches, never the image store.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
