# The front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
INFRA := infra
PY := source infra/env.sh && PYTHONPATH=$(CURDIR) $$VENV/bin/python

.PHONY: help install up down status run demo test test-unit ui-check lint sql backfill lock

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## Install what is missing: Debian packages, the Python environment, Cassandra and Spark jars
	@$(INFRA)/install.sh

up: ## Install what is missing and start every service (idempotent)
	@$(INFRA)/services.sh up

down: ## Stop the services this project started
	@$(INFRA)/services.sh down

status: ## Show each service: state, port, pid, log file
	@$(INFRA)/services.sh status

run: up demo ## The whole thing on a fresh machine: install, start, push clicks through, show results

demo: ## Send real clicks, have Airflow roll them up, show them in the warehouse (services must be up)
	@$(PY) -m infra.demo

test: up ## Install, start the services and run every test (unit, integration, end-to-end)
	@$(INFRA)/test.sh

test-unit: ## Unit tests only: no services needed
	@$(PY) -m pytest -q -m "not integration and not e2e" tests

ui-check: ## Open Airflow's UI in headless Chromium: print the newest rollup run's state, save a screenshot
	@$(INFRA)/install.sh browser
	@$(PY) -m infra.airflow_ui $(UI_ARGS)

lint: ## Ruff over the code
	@source infra/env.sh && $$VENV/bin/ruff check .

sql: ## Open a read-only SQL shell on the warehouse (works while loads run)
	@$(PY) -m warehouse.cli

BACKFILL_DAG := $(or $(DAG),rollup_clicks_minute)

backfill: ## Re-run a DAG over a range (default the minute rollup): make backfill FROM=2026-11-27T10:00 TO=2026-11-27T12:00 [DAG=reconcile_clicks_hourly]
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=<UTC start> TO=<UTC end> [DAG=<dag id>]"; exit 2; }
	@$(PY) -m infra.airflow_api unpause $(BACKFILL_DAG)
	@$(INFRA)/airflow.sh cli backfill create --dag-id $(BACKFILL_DAG) --from-date "$(FROM)" --to-date "$(TO)" --reprocess-behavior completed --max-active-runs 1

lock: ## Re-resolve requirements.txt into requirements.lock
	@source infra/env.sh && $$VENV/bin/pip freeze --exclude-editable | sed '1i # Exact versions of every Python package, resolved from requirements.txt; used as pip constraints.\n# Refresh: make lock' > requirements.lock

.PHONY: load bench-click

load: ## Click the running service (Zipf ads, repeats, forgeries, bots), write the ground truth: make load CLICKS=10000 RATE=1000
	@$(PY) -m click_api.loadgen --clicks $(or $(CLICKS),10000) --rate $(or $(RATE),1000) --concurrency $(or $(CONCURRENCY),32) $(LOAD_ARGS)

bench-click: ## Benchmark /click next to a bare Flask 302 (services up): make bench-click SECONDS=30
	@$(PY) -m infra.bench.bench_click --seconds $(or $(SECONDS),30) $(BENCH_ARGS)

.PHONY: bench-reconcile

bench-reconcile: ## Benchmark dumping and reconciling one hour (services up): make bench-reconcile CLICKS=3000000
	@$(PY) -m infra.bench.bench_reconcile --clicks $(or $(CLICKS),100000) $(BENCH_ARGS)

.PHONY: bench-query

bench-query: ## Benchmark the metrics API on a separate warehouse at design scale: make bench-query DAYS=3 (30 by default)
	@$(PY) -m infra.bench.bench_query --days $(or $(DAYS),30) --ads $(or $(ADS),10000000) --clicks-per-day $(or $(CLICKS_PER_DAY),100000000) $(BENCH_ARGS)

.PHONY: bench-rollup bench-freshness

bench-rollup: ## Benchmark a peak 5-minute batch (3M clicks) through the rollup job and load (services up)
	@$(PY) -m infra.bench.bench_rollup batch --clicks $(or $(CLICKS),3000000)

bench-freshness: ## Measure click-to-warehouse delay while the scheduler runs (services up): make bench-freshness SECONDS=300
	@$(PY) -m infra.bench.bench_rollup freshness --seconds $(or $(SECONDS),300)
