# Raven backend. `make dev` runs the whole backend locally; `make test` runs every check.
# Both install what they need on a fresh machine (Python 3.11 and make are all they assume).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tools whose pins clash with the functions' libraries get virtualenvs of their own.
TASKS_VENV    := .venv-tasks
TASKS_STAMP   := $(TASKS_VENV)/.installed
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# The browser tests' Chromium: Debian's package (CI is a fresh machine, as root).
CHROMIUM      := /usr/bin/chromium
# The original backend's stack (FastAPI + asyncpg), for bench/list_baseline.py only.
BASELINE_VENV  := .venv-baseline
BASELINE_STAMP := $(BASELINE_VENV)/.installed
FUZZ_VENV     := .venv-schemathesis
FUZZ_STAMP    := $(FUZZ_VENV)/.installed

.PHONY: install dev test lint lock lock-check terraform-fmt pytest bench archives routes migrate migrate-cloud checkov clean

# A first run installs for minutes: each step says what it installs, and pip shows its
# progress (PIP_VERBOSE=1 cancels the recipes' --quiet). Nothing runs when nothing changed.
$(STAMP) $(TASKS_STAMP) $(CHECKOV_STAMP) $(FUZZ_STAMP): export PIP_VERBOSE := 1

# Every virtualenv installs from a lock file (make lock): every package pinned, with hashes.
# pip is upgraded first: the pip Python 3.11's venv ships (23.x) rejects a locked package
# with extras (googleapis-common-protos[grpc]) as unpinned in --require-hashes mode.
$(STAMP): requirements-dev.txt
	@echo "==> Installing the functions' libraries, the local stack and the test tools into $(VENV) (first run, or a requirements file changed; ~3 min)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt
	touch $(STAMP)

$(TASKS_STAMP): tools/requirements-tasks-emulator.txt
	@echo "==> Installing the Cloud Tasks emulator into $(TASKS_VENV) (its own virtualenv; first run, ~1 min)"
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(TASKS_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/requirements-tasks-emulator.txt
	touch $(TASKS_STAMP)

$(CHECKOV_STAMP): tools/requirements-checkov.txt
	@echo "==> Installing checkov, the Terraform security checks, into $(CHECKOV_VENV) (first make test, ~2 min)"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/requirements-checkov.txt
	touch $(CHECKOV_STAMP)

# Installed only when missing; Playwright drives it (its own browser download cannot work here).
$(CHROMIUM):
	@echo "==> Installing Chromium for the browser tests (apt-get; first make test, a few minutes)"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(BASELINE_STAMP): tools/requirements-baseline.txt
	$(PYTHON) -m venv $(BASELINE_VENV)
	$(BASELINE_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BASELINE_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/requirements-baseline.txt
	touch $(BASELINE_STAMP)

$(FUZZ_STAMP): tools/requirements-schemathesis.txt
	@echo "==> Installing schemathesis, the API fuzzer, into $(FUZZ_VENV) (first make test, ~1 min)"
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/requirements-schemathesis.txt
	touch $(FUZZ_STAMP)

install: $(STAMP) $(TASKS_STAMP)

## make dev: the whole backend on http://localhost:8000 (Ctrl-C stops it; data stays in .data/)
dev: install
	@$(PY) -m dev.stack

## make test: lint, types, lock files, terraform fmt, then the whole test suite against real components
test: lint lock-check terraform-fmt pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## make lock: compile every requirements .in file into its hashed lock (.txt) after editing one
lock: install
	$(PY) tools/locks.py

## make lock-check: fail when a lock file is out of sync with its .in file (needs PyPI)
lock-check: install
	$(PY) tools/locks.py --check

## terraform fmt -check (the terraform binary only, no provider); skipped, saying so, without it
terraform-fmt:
	@if command -v terraform >/dev/null 2>&1; then \
		terraform fmt -check -recursive -diff terraform; \
	else \
		echo "SKIPPED terraform fmt -check: no terraform binary on PATH (install Terraform >= 1.11 to run it)"; \
	fi

pytest: install $(CHECKOV_STAMP) $(FUZZ_STAMP) $(CHROMIUM)
	$(PY) -m pytest

## make bench: the benchmarks under bench/, numbers printed and saved to bench/results/
bench: install $(BASELINE_STAMP)
	$(PY) -m bench

## make checkov: security checks of terraform/ (tests/test_terraform.py runs them too)
checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -d terraform --quiet --compact --skip-download

## make routes: terraform/load_balancer_routes.json from the route table (shared/routes.py)
routes: install
	$(PY) -m shared.routes

## make archives: the functions' source archives in terraform/.build/ (before every terraform plan/apply)
archives: install
	$(PY) tools/build_function_archives.py

## make migrate-cloud: build the migrations image and run the raven-migrate Cloud Run job
migrate-cloud:
	terraform/migrations/migrate.sh

## make migrate: apply migrations to $DATABASE_URL (or INSTANCE_CONNECTION_NAME + DB_IAM_USER)
migrate: install
	$(PY) -m alembic upgrade head

clean:
	rm -rf $(VENV) $(TASKS_VENV) $(CHECKOV_VENV) $(FUZZ_VENV) .data build terraform/.build .pytest_cache .mypy_cache .ruff_cache
