"""Config version counter in Redis: admin writes bump it; every gateway process reloads its caches
when it sees a new value (checked at most once per GATEWAY_CONFIG_CHECK_SECONDS)."""

import logging
import uuid

from aigateway.redis import redis_sync

CONFIG_VERSION_KEY = "gw:config:version"
logger = logging.getLogger(__name__)
_warned = False


def config_version_bump() -> None:
    try:
        # A fresh unique value, not a counter: a counter reset (Redis restarted or flushed) could
        # land on a value a process already saw and leave its caches stale.
        redis_sync().set(CONFIG_VERSION_KEY, uuid.uuid4().hex)
    except Exception as exc:
        # Redis not reachable (e.g. seeding before it starts): caches still expire by their TTL.
        global _warned
        if not _warned:
            _warned = True
            logger.warning("could not bump config version: %s", type(exc).__name__)
