# `make demo` and `make test` work on a fresh clone with nothing installed:
# they create .venv, install vibe with its pinned dependencies, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz property-runs bench mutation clean test-engines

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

# The property tests again and again, a fresh random seed each run (stops at a failure).
RUNS ?= 200
property-runs: $(STAMP)
	$(BIN)/python tools/property_runs.py --runs $(RUNS)

# Opt-in: vibe's vLLM / SGLang plug-ins through the engines' own code (pinned releases,
# their Python files only, in a separate venv; not part of `make test`).
EVENV  := .venv-engines
ESTAMP := $(EVENV)/.installed

$(ESTAMP): pyproject.toml requirements/pins.txt requirements/engines.txt requirements/engines-deps.txt
	$(PYTHON) -m venv $(EVENV)
	$(EVENV)/bin/pip install --quiet --upgrade pip
	$(EVENV)/bin/pip install --quiet -c requirements/pins.txt torch==2.13.0
	$(EVENV)/bin/pip install --quiet -c requirements/pins.txt -e '.[test]'
	$(EVENV)/bin/pip install --quiet -r requirements/engines-deps.txt
	$(EVENV)/bin/pip install --quiet --no-deps -r requirements/engines.txt
	$(EVENV)/bin/pip download --quiet --no-deps vllm==0.14.0 -d $(EVENV)/wheels
	$(EVENV)/bin/python -c "import zipfile, glob; z = zipfile.ZipFile(glob.glob('$(EVENV)/wheels/vllm-0.14.0-*.whl')[0]); open('$(EVENV)/vllm-0.14.0-abstract.py', 'wb').write(z.read('vllm/distributed/eplb/policy/abstract.py'))"
	touch $(ESTAMP)

test-engines: $(ESTAMP)
	VIBE_ENGINE_TESTS=1 $(EVENV)/bin/python -m pytest -q tests/engines

# Mutation testing of the core (not part of `make test`; see docs/testing.md). One module
# at a time under nice, each with its fast tests: `make mutation MODULES="cost placement"`.
MODULES ?=
mutation: $(STAMP)
	$(BIN)/pip install --quiet -c requirements/pins.txt -e '.[mutation]'
	nice -n 15 $(BIN)/python tools/mutation.py $(MODULES)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(EVENV) build src/*.egg-info .pytest_cache mutants
