# Set-up and the two entry points of the README. Needs only Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_DATA := runs/synthetic_small.nwb

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DEMO_DATA): | $(STAMP)
	$(BIN)/lfads-jslds synth $@ --preset small

## demo: synthetic session -> train LFADS-JSLDS -> infer -> evaluate; prints a summary table
demo: $(STAMP) $(DEMO_DATA)
	$(BIN)/lfads-jslds run $(DEMO_DATA) --out $(RUN) --config pipelines/configs/synthetic_demo.yaml

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: JSLDS vs standard training-step time (paper's task sizes, then MC_Maze LFADS sizes)
bench: $(STAMP)
	$(BIN)/python benchmarks/jslds_step.py
	$(BIN)/python benchmarks/lfads_step.py
