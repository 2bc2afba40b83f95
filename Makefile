# spotify-genre: every target sets up .venv itself, so a fresh clone needs only `make repro` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test test-fast test-install sweep seeds tune bench register serve lock clean help

help:
	@echo "make repro      set up .venv and run the DVC pipeline (dvc repro)"
	@echo "make test       set up .venv and run the whole test suite"
	@echo "make test-fast  unit tests and the core promises (no emulators, servers or other dvc end-to-end runs)"
	@echo "make test-install  pip install . into a fresh venv: predict works, no pipeline packages (minutes)"
	@echo "make sweep      queue and run the default hyperparameter grid, then compare"
	@echo "make seeds      the pipeline per report seed and split protocol as experiments: the README's headline table"
	@echo "make tune       run the Optuna study of tuning.yaml on data/processed/ (TUNE_WORKERS=2 processes)"
	@echo "make bench      measure pipeline speed and write reports/bench.json"
	@echo "make register VERSION=v1.0.0 [STAGE=prod]  tag the committed model as a version (and stage) in GTO's format"
	@echo "make serve      serve models/ over HTTP on 127.0.0.1:8000 (spotify-genre serve)"
	@echo "make lock       re-resolve dependencies into requirements/constraints.txt"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever the declared or locked dependencies change.
$(STAMP): pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[pipeline,dev,dask,tune,serve]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

# The whole suite on TEST_WORKERS processes, a test file to each in turn, in the order tests/conftest.py sorts them
# (pytest-xdist would reorder the files by their number of tests; docs/testing.md).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST)

# The inner loop: the unit tests and the core promises marked `core`; no dvc end-to-end runs, emulators or servers.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "core or not (e2e or slow or emulator or postgres or realdata or install)"

test-install: $(STAMP)
	$(BIN)/python -m pytest -m install

# Run every experiment queued under $$name ($$name or $$name-N) on $(1) workers and print each failed run's log;
# leaves the failed runs' names in $$failed.
RUN_QUEUED = $(BIN)/dvc exp run --run-all --jobs $(1); \
	failed=$$($(BIN)/dvc queue status | \
	  awk -v n="$$name" '($$2 == n || index($$2, n "-") == 1) && $$NF == "Failed" { print $$2 }'); \
	for exp in $$failed; do echo; echo "--- dvc queue logs $$exp"; $(BIN)/dvc queue logs $$exp; done

# The default grid (3 x 2 = 6 experiments); override on the command line, e.g.
#   make sweep SWEEP_LR=0.003,0.03 SWEEP_BATCH=64 SWEEP_JOBS=1
SWEEP_LR ?= 0.01,0.03,0.1
SWEEP_BATCH ?= 128,512
SWEEP_JOBS ?= 2
# `dvc exp show` columns kept for the comparison: the swept params beside test accuracy and macro-F1.
SWEEP_COLUMNS := ^(Experiment|(params\.yaml:)?(lr|momentum|batch_size)|(reports/metrics\.json:)?(accuracy|f1_macro))$$
# Queue the grid under one name, run it, compare, and fail if any run failed.
sweep: $(STAMP)
	@set -e; name=sweep-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/dvc exp run --queue --name $$name -S 'lr=$(SWEEP_LR)' -S 'batch_size=$(SWEEP_BATCH)'; \
	$(call RUN_QUEUED,$(SWEEP_JOBS)); \
	echo; $(BIN)/dvc exp show --md --sort-by reports/metrics.json:accuracy --sort-order desc --hide-failed \
	  --drop '.*' --keep '$(SWEEP_COLUMNS)'; \
	if [ -n "$$failed" ]; then echo "make sweep: failed:" $$failed "(logs above)" >&2; exit 1; fi

# The README's headline table: the whole pipeline once per report seed (SEEDS, comma-separated) and per split
# protocol (SEEDS_PROTOCOLS: grouped by track, grouped by artist), each a DVC experiment, then the MLP against its
# peers by how new a song is (experiments/seeds.py), saved to SEEDS_SAVE; fails if any run failed. The report seeds
# are read once per change of the default; choices are made on validation of the development seeds
# (docs/protocol.md). SEEDS_SET adds `dvc exp run` overrides to every run, e.g.
#   make seeds SEEDS=2,3,4 SEEDS_SAVE=/tmp/dev.json SEEDS_SET="-S train.dropout=0.3"
SEEDS ?= 101,102,103,104,105
SEEDS_PROTOCOLS ?= track_id track_artist
SEEDS_JOBS ?= 2
SEEDS_SET ?=
SEEDS_SAVE ?= reports/seeds.json
seeds: $(STAMP)
	@set -e; name=seeds-$$(date +%Y%m%d-%H%M%S); names=; \
	for protocol in $(SEEDS_PROTOCOLS); do \
	  $(BIN)/dvc exp run --queue --name $$name-$$protocol -S 'split.seed=$(SEEDS)' -S "split.group_by=$$protocol" \
	    $(SEEDS_SET); \
	  names="$$names --name $$name-$$protocol"; \
	done; \
	$(call RUN_QUEUED,$(SEEDS_JOBS)); \
	if [ -n "$$failed" ]; then echo "make seeds: failed:" $$failed "(logs above)" >&2; exit 1; fi; \
	echo; $(BIN)/python -m experiments.seeds $$names --save $(SEEDS_SAVE)

# The study of tuning.yaml (docs/tuning.md) on the pipeline's own processed splits, which it brings up to date first.
# Killed and started again, it continues; e.g. make tune TUNE_ARGS="--trials 100 --storage postgresql://host/db"
TUNE_WORKERS ?= 2
tune: $(STAMP)
	$(BIN)/dvc repro preprocess
	$(BIN)/python -m experiments.tune --workers $(TUNE_WORKERS) $(TUNE_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The model of the commit checked out (its dvc.lock) as a version of the dvc.yaml artifact, and optionally a stage of
# that version: Git tags in GTO's format (spotify-genre-mlp@v1.0.0, spotify-genre-mlp#prod#1), which
# `dvc artifacts get` resolves. Push the model first (`dvc push`), then the tags (`git push origin --tags`).
ARTIFACT ?= spotify-genre-mlp
register: $(STAMP)
	@test -n "$(VERSION)" || { echo "make register: give VERSION, e.g. make register VERSION=v1.0.0 [STAGE=prod]" >&2; exit 2; }
	@git diff --quiet HEAD -- dvc.lock dvc.yaml || { echo "make register: commit dvc.lock and dvc.yaml first" >&2; exit 2; }
	$(BIN)/gto register $(ARTIFACT) HEAD --version $(VERSION)
	@if [ -n "$(STAGE)" ]; then $(BIN)/gto assign $(ARTIFACT) --version $(VERSION) --stage $(STAGE); fi
	@echo "make register: tagged; share with: dvc push && git push origin --tags"

SERVE_ARGS ?=
serve: $(STAMP)
	$(BIN)/spotify-genre serve $(SERVE_ARGS)

lock: | $(BIN)/python
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e '.[pipeline,dev,dask,tune,serve]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV)
