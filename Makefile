# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must be a matched pair; these are the newest pair this project's
# machines serve from their local wheel store (see README, "Installing").
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo demo-single test test-unit test-integration bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-cache-dir --upgrade pip
	$(PY) -m pip install --no-cache-dir $(TORCH_PAIR) -e '.[dev,pipelines]'
	touch $@

setup: $(VENV)/.installed

# A dataset versioned with `dvc add data` (data.dvc): pulled from the DVC remote. The
# embedded default dataset needs none: the prepare stage makes it.
data: setup
	if [ -f data.dvc ]; then $(VENV)/bin/dvc pull -q data.dvc; fi

# The full benchmark (params.yaml): every category through Ray Train, tracked in MLflow;
# its last stage prints the per-category table and where to look next (report.md, MLflow).
# -q: DVC's own stage headers and git hints are left out; the stages' lines and errors stay.
demo: data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro -q

# Without Ray / DVC / MLflow: the core package alone, one model per category.
demo-single: setup
	$(VENV)/bin/skrd4ad demo --out runs/demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=25

# The core package alone (no Ray, MLflow or DVC needed), and the orchestration.
test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

bench: setup
	$(PY) benchmarks/bench_aupro.py
