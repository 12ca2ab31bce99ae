# Two commands on a fresh machine (Python 3.10+, PyPI reachable):
#   make demo   creates .venv, installs gunctl, and runs the whole job on built-in demo data
#   make test   creates .venv with the test extras and runs the test suite (what CI runs)
#   make test-fast   the tests not marked slow (no training, no torchrun): about 5 minutes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= artifacts

.PHONY: demo test test-fast lint bench clean system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

# Debian packages of the real components in tests (Chromium, FFmpeg, GStreamer RTSP), as root.
system-deps:
	bash .ci/system-deps.sh

demo: $(VENV)/.installed
	$(BIN)/gunctl ingest --source demo --force --out $(OUT)
	$(BIN)/gunctl split --out $(OUT)
	$(BIN)/gunctl train --epochs 1 --subset 5 --out $(OUT) --run-name demo-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/gunctl validate $(OUT)/models/fasterrcnn.pth --out $(OUT)

test: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# The CPU benchmarks (about 30 minutes on 2 cores); results in benchmarks/README.md.
bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/bench_help.py
	$(BIN)/python benchmarks/bench_e2e.py --repeats 3
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_defaults.py
	$(BIN)/python benchmarks/bench_ddp.py
	$(BIN)/python benchmarks/profile_step.py

clean:
	rm -rf $(VENV) $(OUT)/raw $(OUT)/splits $(OUT)/runs $(OUT)/models
