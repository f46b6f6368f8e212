# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the C extensions (setup.py lists the same sources); module names and built files follow from them
EXT_SOURCES := runtimes/restricted/_alloccap.c runtimes/restricted/_deepstack.c sandbox/_handoff.c sandbox/wasi/_cabi.c sandbox/wasi/_ticker.c runtimes/_wirecopy.c
EXT_MODULES := $(subst /,.,$(basename $(EXT_SOURCES)))

.PHONY: setup system-deps guest demo test bench soak security-counts clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(EXT_SOURCES)
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench,cedar,data,dataframes,mcp,smolagents,langchain,ray]'
	$(PY) -c 'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' $(EXT_MODULES)  # the editable install built them in place
	@touch $(STAMP)

system-deps:
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh

guest: setup
	$(PY) -m sandbox.wasi.build

demo: guest
	$(PY) examples/agent_demo.py

test: guest
	$(PY) -m mypy
	$(PY) -m pytest -q

soak: guest
	SANDBOX_SOAK_RUNS=10000 $(PY) -m pytest -q -s tests/adversarial/test_soak.py

security-counts: setup
	$(PY) -m tests.adversarial.counts

bench: guest
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache $(addsuffix *.so,$(basename $(EXT_SOURCES)))
