# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast clean

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

## Unit tests only (seconds).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf .nextbest .pytest_cache
