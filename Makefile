# build-swarm: `make demo` runs a local swarm, `make test` runs every test (both set themselves up).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/swarmctl demo

lint: $(STAMP)
	$(BIN)/ruff check swarmctl plugins tests bench
	$(BIN)/mypy
	@if [ -f .yamllint ]; then $(BIN)/yamllint -s .; fi
	@if [ -d roles ] && [ -f .ansible-lint ]; then PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint; fi

test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/claims.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/publish.py
	$(BIN)/python bench/package_policy.py
	$(BIN)/python bench/schedule.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
