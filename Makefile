# make demo: set up .venv from nothing, then run the main job on the built-in synthetic data.
# make test: set up .venv (with test extras) if needed, then run the fast tier: unit tests and one end-to-end
#   test per entry point (pytest -m "not slow"; no PostgreSQL needed).
# make test-all: every test, the slow tier too (multi-process launches, mlflow run, kill -9 resumes, PostgreSQL);
#   what CI runs (.ci/run).
# make lock: after a dependency change in pyproject.toml, rewrite constraints.txt (the versions make venv installs).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# --no-cache-dir: a pip cache would hold a second copy of the ~4 GB of torch/CUDA wheels.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-cache-dir

export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# Tokenizers and OpenMP: one thread pool per process, sized to the machine.
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-all venv lock mlproject clean postgres

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version.split()[0]}: make PYTHON=/path/to/python3.11"'
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge 8 ] || \
	  echo "note: only $${free} GiB free here; the install needs about 8 GiB (torch's Linux wheels bring the CUDA libraries)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# -c constraints.txt: the exact versions the benchmarks were measured with (make lock rewrites it).
	$(PIP_INSTALL) -c constraints.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/mlflow run . -e selftrain --env-manager local --experiment-name lesion-demo
	@echo "Open the results: $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)"

# The distributed-tuning test runs a throwaway PostgreSQL server: Debian's package, installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "note: PostgreSQL is not installed; the distributed-tuning test will be skipped"; }

test: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP) postgres
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q

# After changing a dependency in pyproject.toml: install it into .venv without the old constraints, then record
# every installed version (keeping the header).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e ".[test]"
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check \
	  | grep -v '^ruff=='; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	touch $(STAMP)

mlproject: $(STAMP)
	$(BIN)/python -m lesion.mlproject > MLproject

clean:
	rm -rf $(VENV) outputs mlruns mlartifacts mlflow.db optuna.db .pytest_cache
