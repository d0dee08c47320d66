# make run  - the whole system in the foreground (Ctrl-C stops it): ASGI server on :8000, the
#             upstream simulator on :9100, a Celery worker with beat, and the embedded Redis
#             (unless REDIS_URL is set).
# make test - lint (ruff, the Kubernetes manifests, the migrations) and the test suite.
# make lint-migrations - django-migration-linter over the SQL PostgreSQL would run (a private server for the run).
# make lint-kubernetes - deploy/kubernetes/ against the vendored Kubernetes 1.30 schemas (strict).
# make test-postgres - the test suite against a private PostgreSQL server started (and deleted) for the run.
# make fuzz - the fuzz tests alone, with FUZZ_EXAMPLES (5,000) generated cases per endpoint instead of 200.
PYTHON ?= python3
# The Makefile is the development entry point: DEBUG on (with the local secret key) for everything it
# runs, unless the environment says otherwise. The settings' own default is production's, DEBUG off.
export DJANGO_DEBUG ?= True
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-postgres lint lint-migrations lint-kubernetes bench bench-tracing bench-workers bench-metrics bench-sse bench-compare bench-request-log soak clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f $(if $(REDIS_URL),Procfile,Procfile.embedded)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Migrations that the release still running tolerates during a rolling deploy: tests/migration_lint_settings.py
# says what fails and which released migrations are accepted as they are. PostgreSQL's SQL, not SQLite's.
lint-migrations: $(STAMP)
	DJANGO_SETTINGS_MODULE=tests.migration_lint_settings $(PY) -m tests.support.postgres -- \
		$(PY) manage.py lintmigrations

# Every Kubernetes object under deploy/kubernetes/ (kustomization.yaml and Helm values are not objects).
K8S_SCHEMA := deploy/kubernetes/schemas/kubernetes-v1.30-strict.json
K8S_MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml)) \
	$(filter-out %/prometheus-adapter-values.yaml,$(wildcard deploy/kubernetes/extras/*.yaml))
lint-kubernetes: $(STAMP)
	$(VENV)/bin/check-jsonschema --schemafile $(K8S_SCHEMA) $(K8S_MANIFESTS)

test: $(STAMP) lint lint-kubernetes
	.ci/test-deps
	$(MAKE) --no-print-directory lint-migrations
	$(VENV)/bin/pytest

test-postgres: $(STAMP)
	.ci/test-deps
	$(PY) -m tests.support.postgres -- $(VENV)/bin/pytest

FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	GATEWAY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest --timeout=0 tests/test_fuzz_*.py providers/tests/test_dialect_validation.py

bench: $(STAMP)
	$(PY) bench/bench_relay.py
	$(PY) bench/bench_cache.py

# Requests/s and added time to first byte with 1 and with 2 gateway worker processes, one run.
bench-workers: $(STAMP)
	$(PY) bench/bench_workers.py

# What counting a call (metrics tallies, the request log line) costs the hot path, in microseconds.
bench-metrics: $(STAMP)
	$(PY) bench/bench_metrics.py

# Milliseconds the SSE decoder takes for one 1, 2 and 4 MiB read of stream events (linear in the size).
bench-sse: $(STAMP)
	$(PY) bench/bench_sse.py

# Hot-path cost of OpenTelemetry tracing: off, on for every trace, and 10% sampled.
bench-tracing: $(STAMP)
	$(PY) bench/bench_tracing.py

bench-compare: $(STAMP)
	$(PY) bench/bench_compare.py

# A million request log records on a private PostgreSQL server: table size, the admin viewer's filtered pages,
# retention's cleanup (docs/performance.md, "Request log at a million rows"); about 20 minutes and 8 GB of disk.
bench-request-log: $(STAMP)
	$(PY) bench/bench_request_log.py

# 500 concurrent clients for 5 minutes (normal, disconnecting, upstream-failing, closing at the final event, websockets,
# clients that stop reading); usage records checked against admitted calls; non-zero exit on a failed check.
soak: $(STAMP)
	$(PY) bench/soak.py --concurrency 500 --duration 300

clean:
	rm -rf var $(VENV)
