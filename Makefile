# Lookalike: `make demo` and `make test` are the two commands (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The project is run from the source tree (PYTHONPATH), never installed into the
# shared cached venv: two clones must not see each other's code.
VENV = $(shell ./scripts/venv.sh)
PY = PYTHONPATH=$(CURDIR) $(VENV)/bin/python
# glibc's allocator returns large tensor buffers to the OS after every batch and
# faults them in again; keeping them mapped made CPU inference 4-5x faster here.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: help setup demo stack test bench lint

help:
	@echo "make demo   - set up and run the sample catalog end to end (embedded mode)"
	@echo "make test   - run the whole test suite (starts throwaway PostgreSQL/Redis)"
	@echo "make stack  - the full stack natively: PostgreSQL, Redis, migration, API behind nginx, worker, beat"
	@echo "make lint   - ruff (part of make test);  make bench - the quick benchmarks"

setup:
	@./scripts/setup-system.sh
	@./scripts/venv.sh >/dev/null

demo: setup
	$(PY) -m cli demo

stack: setup
	$(PY) -m cli stack $(STACK_ARGS)

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick variant of each benchmark, one after another, printing their tables (minutes, not
# hours; docs/BENCHMARKS.md has the full runs and their commands). Not part of `make test`.
QUICK_BENCHES = mining index embed import
bench: setup
	@for b in $(QUICK_BENCHES); do echo "== bench/bench_$$b.py --quick"; $(PY) bench/bench_$$b.py --quick || exit 1; done

# pyflakes, pycodestyle and import order (configured in pyproject.toml); part of `make test`.
lint: setup
	$(VENV)/bin/ruff check .
