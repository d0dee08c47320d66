# make run  - the whole system in the foreground (Ctrl-C stops it): ASGI server on :8000, the
#             upstream simulator on :9100, a Celery worker with beat, and the embedded Redis
#             (unless REDIS_URL is set).
# make test - lint and the test suite.
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

bench: $(STAMP)
	$(PY) bench/bench_relay.py

bench-compare: $(STAMP)
	$(PY) bench/bench_compare.py

# 500 concurrent streams for 5 minutes (normal, client-disconnecting, upstream-failing); non-zero exit on a failed check.
soak: $(STAMP)
	$(PY) bench/soak.py --concurrency 500 --duration 300

clean:
	rm -rf var $(VENV)
