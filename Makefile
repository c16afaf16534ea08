# The two commands: `make run` starts the whole platform, `make test` runs the test suite.
# Both create the virtualenv (.venv) and install the locked requirements on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: run test lint format lock clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Browser libraries for the pages (lightweight-charts), exactly as package-lock.json pins them.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed to install the pages' chart library (package-lock.json)"; exit 1; }
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(PIP) install -r requirements.txt -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

# Embedded default (nothing set): SQLite and a private Redis under var/, plus the Procfile's web,
# worker, research, beat and collector, with the demo's simulated exchange (TRADEAPP_DEMO=1 adds
# it in production too). Production (DATABASE_URL and REDIS_URL set): the same but `redis`, on
# those services. supervisord runs them (tradeapp/supervise.py): a process that dies is started
# again while the others keep running; Ctrl-C stops them all.
run: $(VENV)/.run-deps node_modules/.installed
	python manage.py migrate --noinput
	python manage.py collectstatic --noinput --verbosity 0
	python manage.py ensure_admin
	@if [ -z "$$DATABASE_URL$$REDIS_URL" ] || [ "$${TRADEAPP_DEMO:-0}" = 1 ]; then \
	  python manage.py demo_setup; fi
	@echo "tradeapp: http://$${TRADEAPP_HOST:-127.0.0.1}:$${TRADEAPP_PORT:-8000}/  (Ctrl-C stops everything)"
	exec python manage.py supervise

# With DATABASE_URL/REDIS_URL set, the production profile is tested against those services; the
# secret key and hosts it also requires get throwaway test values unless given.
test: $(VENV)/.dev-deps node_modules/.installed
	@if [ -n "$$DATABASE_URL$$REDIS_URL" ]; then \
	  export DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-$$(python -c 'import secrets; print(secrets.token_urlsafe(50))')}"; \
	  export DJANGO_ALLOWED_HOSTS="$${DJANGO_ALLOWED_HOSTS:-localhost,127.0.0.1}"; \
	fi; \
	pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-deps
	ruff check .
	ruff format --check .

format: $(VENV)/.dev-deps
	ruff check --fix .
	ruff format .

# Re-resolve the lockfiles from requirements.in / requirements-dev.in.
lock: | $(BIN)/python
	$(PIP) install pip-tools
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.txt requirements-dev.in
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-bench.txt requirements-bench.in

clean:
	rm -rf $(VENV) var node_modules .pytest_cache .ruff_cache

# Every bench/bench_*.py against its baseline, printed as one table of ratios.
# BENCH_ARGS="--quick" for small sizes, "--only aggregation" for one module.
BENCH_ARGS ?=
$(VENV)/.bench-deps: requirements.txt requirements-dev.txt requirements-bench.txt | $(BIN)/python
	$(PIP) install -r requirements.txt -r requirements-dev.txt -r requirements-bench.txt
	touch $@ $(VENV)/.dev-deps $(VENV)/.run-deps

bench: $(VENV)/.bench-deps
	python -m bench.run $(BENCH_ARGS)
