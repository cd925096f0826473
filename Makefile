# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint benchmarks-doc clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## End-to-end quickstart in ./.nextbest (or $$NEXTBEST_HOME).
demo: $(STAMP)
	$(BIN)/nextbest quickstart

## The whole test suite, slow end-to-end tests included.
test: $(STAMP)
	$(BIN)/python -m pytest

## The tests not marked slow: unit, data, adapters, Feast and training (a few minutes).
test-fast: $(STAMP)
	@echo "test-fast leaves out the slow tests (marked slow: the real service, end to end, the closed-loop simulator, monitoring on whole banks, OPE worlds, two-process training, deploy); make test runs them all"
	$(BIN)/python -m pytest -m "not slow"

## Static checks (ruff: errors, unused names, line length).
lint: $(STAMP)
	$(BIN)/ruff check

## docs/benchmarks.md from benchmarks/benchmarks.md.in and the result files in benchmarks/results/.
benchmarks-doc: $(STAMP)
	$(BIN)/python benchmarks/render.py

clean:
	rm -rf .nextbest .pytest_cache
