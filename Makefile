# hatetune — two commands on a fresh machine: `make run` (the default pipeline) and `make test`.
# Both create .venv if missing and install once (re-installing only when pyproject.toml changes).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands call `python`: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test serve params check-params clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: any request for a newer torch pulls GBs of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

# The whole default pipeline. Offline: HATETUNE_MIRROR=../shared/mirror make run
run: $(STAMP)
	dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

# The inference service on what the pipeline trained (http://127.0.0.1:5000). Overrides: make serve ARGS="serve.port=5001"
serve: $(STAMP)
	$(BIN)/python -m hatetune.serve $(ARGS)

# Regenerate params.yaml from conf/ (dvc repro reads params.yaml; dvc exp run recomposes it).
params: $(STAMP)
	$(BIN)/python -m hatetune.config compose

check-params: $(STAMP)
	$(BIN)/python -m hatetune.config check

clean-venv:
	rm -rf $(VENV)
