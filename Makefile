# Raven backend. `make dev` runs the whole backend locally; `make test` runs every check.
# Both install what they need on a fresh machine (Python 3.11 and make are all they assume).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install dev test lint pytest bench migrate clean

$(STAMP): requirements-dev.txt functions/*/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## make dev: the whole backend on http://localhost:8000 (Ctrl-C stops it; data stays in .data/)
dev: install
	$(PY) -m dev.stack

## make test: lint, types, then the whole test suite against real components
test: lint pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest

## make bench: the benchmarks under bench/, numbers printed and saved to bench/results/
bench: install
	$(PY) -m bench

## make migrate: apply migrations to $DATABASE_URL (or INSTANCE_CONNECTION_NAME + DB_IAM_USER)
migrate: install
	$(PY) -m alembic upgrade head

clean:
	rm -rf $(VENV) .data build .pytest_cache .mypy_cache .ruff_cache
