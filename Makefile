# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The venv is built with pip (not uv/poetry): pip takes torch from the machine's local wheel cache.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output
PYTEST_WORKERS ?= 2

.PHONY: venv demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
# The complete NIH metadata table ships in this wheel; tests/test_nih.py reads it (and skips without it).
# Downloaded, not installed; the leading '-' keeps an offline machine going.
	-$(PY) -m pip download --quiet --no-deps --dest $(VENV)/wheels torchxrayvision
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxr demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# CPU benchmarks (minutes each); benchmarks/gpu_train.py needs a GPU and is run by hand (docs/benchmarks.md).
bench: $(STAMP)
	for b in prepare synth train_throughput evaluate inference; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
