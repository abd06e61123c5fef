# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_N ?= 300

.PHONY: install demo lint docs test test-ha bench bench-scale bench-store bench-rss bench-projections migrate worker beat flower api payment-service clean

DEMO_STAMP := $(VENV)/.demo-stamp

# The developer toolchain (`make lint`, `make test`): every extra, with mypy, ruff, Playwright, schemathesis.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

# What the demo needs and nothing more: the library and a PostgreSQL driver (for SAGA_DATABASE_URL).
# A venv that has the toolchain already has it.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[postgres]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)  ## run real sagas end to end on the embedded default (no server needed)
	$(BIN)/python -m tasks.demo

lint: $(STAMP)  ## ruff, then mypy: strict on the library, relaxed on the example services and the deployment
	$(BIN)/ruff check .
	$(BIN)/mypy workflows
	$(BIN)/mypy tasks worker.py api.py celeryconfig.py

docs: $(STAMP)  ## the docs site (mkdocs.yml, docs/): strict, so a broken link, a missing page or a stale reference fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: $(STAMP) lint docs  ## lint, the docs build, then the whole suite, against the real PostgreSQL, Redis and RabbitMQ
	$(BIN)/python -m pytest -q

test-ha: $(STAMP)  ## the highly available setups at the issue's size: Sentinel failover and RabbitMQ restart under 500 sagas, PgBouncer
	HA_N=500 $(BIN)/python -m pytest -q -s tests/servers/test_ha_sentinel.py tests/servers/test_ha_rabbitmq.py tests/servers/test_pgbouncer.py

$(VENV)/.bench-stamp: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(VENV)/.bench-stamp

bench: $(VENV)/.bench-stamp  ## throughput and latency against Celery chains, groups and DBOS (Redis + PostgreSQL); a step's cost with tracing, and with the Kafka, Redis and notification projections, off and on
	$(BIN)/python bench/run.py --n $(BENCH_N)
	$(BIN)/python bench/tracing_cost.py --n $(BENCH_N)
	$(BIN)/python bench/projections.py --n $(BENCH_N)

HOSTS ?= 1,2,3
HOSTS_N ?= 120

bench-scale: $(VENV)/.bench-stamp  ## throughput against worker processes: prefork 1, 2, 4 and two workers of 2 (and each through PgBouncer, when installed); then per host count (1, 2, 3 hosts in network namespaces, a pool per queue; root and socat)
	$(BIN)/python bench/scale.py --n $(BENCH_N) $(if $(wildcard /usr/sbin/pgbouncer),--pgbouncer) $(if $(wildcard /usr/bin/socat),--hosts $(HOSTS) --hosts-n $(HOSTS_N))

bench-store: $(STAMP)  ## the store at a million history rows: status, list, sweeper and retention times
	$(BIN)/python bench/store_scale.py

bench-projections: $(STAMP)  ## per-step cost of the Kafka saga-events and Redis read-model projections, on and off
	$(BIN)/python bench/projections.py --n $(BENCH_N)

bench-rss: $(STAMP)  ## worker RSS after 500, then 5,000 more sagas: fails if it grows
	$(BIN)/python bench/run.py --rss-check --rss-n 500,5000

migrate: $(DEMO_STAMP)  ## the saga tables (`sagas migrate`) and the example shop's
	$(BIN)/python -m tasks.schema

worker: $(STAMP)
	$(BIN)/celery -A worker worker --loglevel=INFO

beat: $(STAMP)
	$(BIN)/celery -A worker beat --loglevel=INFO

flower: $(STAMP)
	FLOWER_UNAUTHENTICATED_API=true $(BIN)/celery -A worker flower

api: $(STAMP)  ## the HTTP API on port 8000
	$(BIN)/uvicorn api:app --port 8000

# The example payment service on its own port, with its failure switch (test mode on unless
# SAGA_TEST_MODE says otherwise): curl -X POST http://localhost:8001/api/test/fail-next-request
payment-service: $(STAMP)  ## the example payment service on port 8001 (its test-mode failure switch)
	SAGA_TEST_MODE=$${SAGA_TEST_MODE:-true} $(BIN)/uvicorn tasks.payment_service:app --port 8001

clean:
	rm -rf $(VENV) .saga-data .demo-data site
