# `make serve` and `make test` are the whole set-up on a fresh machine (see README).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/covey serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/covey bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
