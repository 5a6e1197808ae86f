# Every target sets up what it needs: a virtualenv (the active one, else .venv) with the
# package installed in editable mode and the extras the target uses.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
PORT ?= 8787

.PHONY: run test lint bench bench-micro loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	@touch $@

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

run: $(VENV)/.installed-base
	$(BIN)/streamproxy serve --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check streamproxy tests bench loadtests
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed-test
	$(BIN)/ruff check streamproxy tests bench loadtests

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench

clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache .hypothesis
