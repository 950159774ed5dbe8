# Everything a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test lint typecheck layers pytest demo bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		(echo 'Python 3.11 or newer is needed: make PYTHON=/path/to/python3.11'; exit 1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

lint: $(BIN)/.installed
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy

layers: $(BIN)/.installed
	$(BIN)/lint-imports

pytest: $(BIN)/.installed
	$(BIN)/pytest

test: lint typecheck layers pytest

demo: $(BIN)/.installed
	$(BIN)/python -m gateway.demo

bench: $(BIN)/.installed
	$(BIN)/python -m bench.codec
	$(BIN)/python -m bench.journal
	$(BIN)/python -m bench.indexes
	$(BIN)/python -m bench.gateway

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
