# Set-up and the two entry points of the README. Needs only Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/flipflop-demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: train the 3-bit flip-flop JSLDS for a short run and print where it is
demo: $(STAMP)
	$(BIN)/lfads-jslds task train flipflop --out $(RUN) --steps 300

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: JSLDS vs standard RNN training-step time at the paper's sizes
bench: $(STAMP)
	$(BIN)/python benchmarks/jslds_step.py
