# spotify-genre: every target sets up .venv itself, so a fresh clone needs only `make repro` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test test-fast sweep bench lock clean help

help:
	@echo "make repro      set up .venv and run the DVC pipeline (dvc repro)"
	@echo "make test       set up .venv and run the whole test suite"
	@echo "make test-fast  unit tests only (no dvc end-to-end runs)"
	@echo "make sweep      queue and run the default hyperparameter grid, then compare"
	@echo "make bench      measure pipeline speed and write reports/bench.json"
	@echo "make lock       re-resolve dependencies into requirements/constraints.txt"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever the declared or locked dependencies change.
$(STAMP): pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e"

SWEEP_LR ?= 0.01,0.03,0.1
SWEEP_BATCH ?= 128,512
sweep: $(STAMP)
	$(BIN)/dvc exp run --queue -S 'lr=$(SWEEP_LR)' -S 'batch_size=$(SWEEP_BATCH)'
	$(BIN)/dvc queue start -j 1
	$(BIN)/python -m stages.sweep_wait
	$(BIN)/dvc exp show --only-changed --sort-by reports/metrics.json:accuracy --sort-order desc --md

bench: $(STAMP)
	$(BIN)/python -m bench

lock: | $(BIN)/python
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV)
