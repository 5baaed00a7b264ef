# One entry point for people and CI. `make dev` runs the whole pipeline on the
# embedded defaults; `make test` runs the suite against a real broker and database.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install dev test lint bench browser clean

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

dev: install
	$(BIN)/fleetstream dev

# Chromium drives the map test; Debian's package is the only browser that runs here.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium from apt for the map test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || { \
	    apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }

test: install browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Every benchmark at a modest scale; BENCH_ARGS=--full for the real one.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .fleetstream
