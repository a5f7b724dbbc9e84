# `make demo` and `make test` work on a fresh clone with nothing installed:
# they create .venv, install vibe with its pinned dependencies, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz bench mutation clean

$(STAMP): pyproject.toml requirements/pins.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/pins.txt torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/pins.txt -e '.[torch,hf,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vibe demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Property tests with random examples (make test draws a fixed, derandomized set).
fuzz: $(STAMP)
	VIBE_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -k "not slow" tests

# Mutation testing of the core (not part of `make test`; see docs/testing.md). One module
# at a time under nice, each with its fast tests: `make mutation MODULES="cost placement"`.
MODULES ?=
mutation: $(STAMP)
	$(BIN)/pip install --quiet -c requirements/pins.txt -e '.[mutation]'
	nice -n 15 $(BIN)/python tools/mutation.py $(MODULES)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache mutants
