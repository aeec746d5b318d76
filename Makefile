# Two commands do all set-up on a fresh machine:
#   make demo   — install, then run the main job end to end on the embedded default
#   make test   — install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean rehearsal

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (the wheel on disk); nothing below may pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
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

clean:
	rm -rf artifacts demo_data
