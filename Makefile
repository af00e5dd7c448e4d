# make install: .venv with strata and its dev tools; make test: ruff + pytest; make demo: the mini recipe end to end.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean espeak

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "strata needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: lint espeak
	$(BIN)/python -m pytest -q

# The mini corpus needs espeak-ng: installed with apt-get when missing and we are root, else say how.
espeak:
	@command -v espeak-ng > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng > /dev/null; \
	  else \
	    echo "espeak-ng is missing: sudo apt-get install espeak-ng (Debian/Ubuntu) or brew install espeak-ng (macOS)" >&2; \
	    exit 1; \
	  fi; }

demo: install espeak
	PATH="$(abspath $(BIN)):$$PATH" bash egs/mini/run.sh

bench: install
	$(BIN)/python benchmarks/upstream_overhead.py --repeats 30

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
