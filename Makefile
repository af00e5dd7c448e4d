# make install: .venv with strata and its dev tools; make test: ruff + pytest; make demo: the main job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "strata needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/strata upstreams
	$(BIN)/strata inspect --upstream tiny_hubert

bench: install
	$(BIN)/python benchmarks/upstream_overhead.py --repeats 30

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
