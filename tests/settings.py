"""Settings of the test run: the project's own, on a development machine's environment.

DEBUG is off by default (production's default); the suite runs as development does, with DEBUG on and
the local secret key, unless its environment says otherwise. It is set in the environment, not only here,
so the gateway, worker and simulator processes the tests start inherit it. (pytest-django still runs each
test with DEBUG off, as Django's test runner does.) Tests of production settings pass DJANGO_DEBUG=False
to the processes they start.
"""

import os

os.environ.setdefault("DJANGO_DEBUG", "True")
# Tests stop and kill workers with an embedded beat and start new ones: the lock of a killed beat lapses in
# seconds here, not production's 30.
os.environ.setdefault("GATEWAY_BEAT_LOCK_SECONDS", "3")

from aigateway.settings import *  # noqa: E402, F403
