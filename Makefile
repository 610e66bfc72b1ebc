# Engram — the two commands are `make book` and `make test`; both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pins for reproducible runs (torch==2.13.0, a CPU wheel). Override with `make setup CONSTRAINTS=` to take
# whatever torch your platform has (e.g. a CUDA build on a GPU machine).
CONSTRAINTS ?= .ci/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
INSTALLED := $(VENV)/.installed
JOBS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE
# numpy's BLAS: the test workers run side by side on few cores; threads of their own only contend
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup test test-fast lint book lab bench assign gpu-check stamp strip clean

setup: $(INSTALLED)

# Idempotent: re-runs only when the requirement files change.
$(INSTALLED): requirements.txt requirements-dev.txt pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_C) -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(PY) -m labkit lint-notebooks

# Everything CI runs: lint, unit + kernel + notebook + lab tests in parallel, then the book build and the
# browser check (which reuse the FAST outputs the notebook tests wrote to tests/_executed/).
test: lint
	LABKIT_PROGRESS=0 $(VENV)/bin/pytest -n $(JOBS) --durations=15 -m "not book" tests
	LABKIT_PROGRESS=0 $(VENV)/bin/pytest -m book tests

test-fast: lint
	LABKIT_PROGRESS=0 $(VENV)/bin/pytest -n $(JOBS) -m "not book and not notebook and not slow" tests

# Full-size execution of every notebook through jupyter-book's cache (only changed notebooks re-run).
# Progress bars are for people running a notebook, not for the static page: silenced here.
book: setup
	LABKIT_PROGRESS=0 $(VENV)/bin/jupyter-book build .
	@echo "The book is at $(CURDIR)/_build/html/index.html"

lab: setup
	$(VENV)/bin/jupyter lab labs/

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/merging.py

# Student versions of every lab (solutions removed) into build/student.
assign: setup
	$(PY) -m labkit assign labs/ --out build/student --force

# On a CUDA machine: Triton for real (no interpreter), kernel tests and benchmarks.
gpu-check: setup
	TRITON_INTERPRET=0 $(VENV)/bin/pytest -q tests/kernels
	$(PY) benchmarks/run.py
	$(PY) benchmarks/merging.py --out benchmarks/results/merging-gpu.json

stamp: setup
	$(PY) -m labkit stamp

strip: setup
	$(PY) -m labkit strip

clean:
	rm -rf _build build tests/_executed .pytest_cache
