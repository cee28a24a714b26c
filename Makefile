# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The venv is built with pip (not uv/poetry): pip takes torch from the machine's local wheel cache.
# It installs the exact versions in requirements.lock (Linux x86_64, Python 3.11; `make lock` refreshes it from
# pyproject.toml); `make venv LOCK=` installs from pyproject.toml's ranges instead (other platforms).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK ?= requirements.lock
DEMO_OUT ?= demo-output
PYTEST_WORKERS ?= 2

.PHONY: venv lock demo test test-fast lint format bench clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
ifneq ($(LOCK),)
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
else
	$(PY) -m pip install --quiet -e '.[train,dev,foundation,pacs]'
endif
# The complete NIH metadata table ships in this wheel; tests/data/test_nih.py reads it (and skips without it).
# Downloaded, not installed; the leading '-' keeps an offline machine going.
	-$(PY) -m pip download --quiet --no-deps --dest $(VENV)/wheels torchxrayvision==1.5.7
	touch $(STAMP)

# pip-tools in a venv of its own, so the project's venv holds exactly the lock.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet 'pip-tools>=7.4'
	.venv-lock/bin/pip-compile --quiet --upgrade --allow-unsafe --strip-extras --extra train --extra dev --extra foundation --extra pacs --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxr demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/dict_api.py
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

# The edit-test loop: lint (with the bare-dict budget of tools/dict_api.py), then every test not marked slow (nothing that trains a model or runs a server).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/dict_api.py
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/dict_api.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# CPU benchmarks (minutes each); benchmarks/gpu_train.py needs a GPU and is run by hand (docs/benchmarks.md).
bench: $(STAMP)
	for b in prepare synth train_throughput evaluate inference; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
