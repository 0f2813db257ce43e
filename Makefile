# `make demo` sets everything up and trains + attacks two models; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
DATA ?= cifar10
PRESET ?= smoke
CLASS ?= 3
BIN := $(VENV)/bin
IMBADV := $(BIN)/imbadv
OPTIONS := --preset $(PRESET) --data $(DATA)

.PHONY: setup setup-test demo test test-fast lint
setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# The package alone, for the demo; the test tools (ART, PostgreSQL driver, ruff) only for the tests.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# torchattacks (AutoAttack, and the strong attacks' reference in the tests) goes in apart: it pins an
# old requests that MLflow's dependencies rule out.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	$(BIN)/python -m pip install -q --no-deps 'torchattacks>=3.5'
	touch $@

demo: setup
	$(IMBADV) train $(OPTIONS)
	$(IMBADV) train $(OPTIONS) --sampling under --class-id $(CLASS)
	$(IMBADV) evaluate $(OPTIONS) --sampling under --class-id $(CLASS)
	$(IMBADV) evaluate $(OPTIONS) --sampling under --class-id $(CLASS) --source balanced
	$(IMBADV) models
	@echo "Browse the runs: $(IMBADV) ui"

test: setup-test
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

test-fast: setup-test
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow"

lint: setup-test
	$(BIN)/ruff check .
