# Set-up and the two entry points of the README. Needs only Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ifndef RUN  # expanded once: the run folder and the link below must agree
RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
endif
LATEST := runs/demo-latest
DEMO_DATA := runs/synthetic_small.nwb

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,tune]'
	touch $(STAMP)

$(DEMO_DATA): | $(STAMP)
	$(BIN)/lfads-jslds synth $@ --preset small

## demo: synthetic session -> train LFADS-JSLDS -> infer -> evaluate -> analyze; prints a
## summary table; $(LATEST) links the newest demo run (the notebooks' default)
demo: $(STAMP) $(DEMO_DATA)
	$(BIN)/lfads-jslds run $(DEMO_DATA) --out $(RUN) --config pipelines/configs/synthetic_demo.yaml
	ln -sfn $(abspath $(RUN)) $(LATEST)

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: JSLDS vs standard training-step time (paper's task sizes, then MC_Maze LFADS sizes)
bench: $(STAMP)
	$(BIN)/python benchmarks/jslds_step.py
	$(BIN)/python benchmarks/lfads_step.py
