# MinT task file. `make demo` and `make test` are the README's quick start; each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint protos schema bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a machine that ships this CPU wheel then installs nothing bigger.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/mint demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

protos: install
	$(BIN)/python scripts/gen_protos.py

# Regenerate migrations/schema.sql from a scratch database (needs Postgres on 127.0.0.1).
schema: install
	$(BIN)/python -m services.catalog.schema_dump > migrations/schema.sql

bench-quick: install
	for b in catalog_scale engine_mixed adapter_load handoff multipolicy sweep wave kernels_gpu; do $(BIN)/python -m bench.$$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .mint .pytest_cache .ruff_cache
