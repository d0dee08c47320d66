# make run  - the whole system in the foreground (Ctrl-C stops it): ASGI server on :8000, the
#             upstream simulator on :9100, a Celery worker with beat, and the embedded Redis
#             (unless REDIS_URL is set).
# make test - lint and the test suite.
# make fuzz - the fuzz tests alone, with FUZZ_EXAMPLES (5,000) generated cases per endpoint instead of 200.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-compare soak clean

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

test: $(STAMP) lint
	$(VENV)/bin/pytest

FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	GATEWAY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest --timeout=0 tests/test_fuzz_*.py providers/tests/test_dialect_validation.py

bench: $(STAMP)
	$(PY) bench/bench_relay.py

bench-compare: $(STAMP)
	$(PY) bench/bench_compare.py

# 500 concurrent streams for 5 minutes (normal, client-disconnecting, upstream-failing); non-zero exit on a failed check.
soak: $(STAMP)
	$(PY) bench/soak.py --concurrency 500 --duration 300

clean:
	rm -rf var $(VENV)
