"""Shared fixtures: a real Redis server, the upstream simulator, gateway processes."""

pytest_plugins = [
    "tests.support.redis",
    "tests.support.simulator",
    "tests.support.gateway",
    "tests.support.celery",
    "tests.support.secrets_audit",
    "pytester",
]
