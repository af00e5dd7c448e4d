# make install: .venv with strata and its dev tools, exactly the versions in requirements/lock.txt; make test: ruff +
# pytest; make demo: every task of the mini recipe end to end (7 to 9 minutes on 2 cores); make demo-full: the
# whole mini recipe (every upstream, pre-training); make lock: resolve pyproject's ranges afresh and test them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt

.PHONY: install test demo demo-full lint bench clean espeak lock check-native

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "strata needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	$(BIN)/python -m recipes.environment --check
	@touch $(STAMP)

install: $(STAMP)

# Every native library strata loads (torch, torchaudio's, libsndfile, sentencepiece), each doing a little real work.
check-native: install
	$(BIN)/python -m recipes.environment --check

# A clean venv, pyproject's ranges resolved afresh (no lock), every resolved version written to the lock, then the
# whole test suite on it. Commit the lock only when this passes.
lock:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m recipes.environment --check
	{ echo "# The tested dependency set: make install installs through it (pip -c). Written by make lock on"; \
	  echo "# $$(date -u +%F), Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'); see README, Installing and upgrading dependencies."; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK)
	@touch $(STAMP)
	$(MAKE) test

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
	PATH="$(abspath $(BIN)):$$PATH" bash egs/mini/run.sh --demo true

demo-full: install espeak
	PATH="$(abspath $(BIN)):$$PATH" bash egs/mini/run.sh

bench: install
	$(BIN)/python benchmarks/upstream_overhead.py --repeats 30

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
