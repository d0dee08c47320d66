"""Config version counter in Redis: admin writes bump it; every gateway process reloads its caches
when it sees a new value (checked at most once per GATEWAY_CONFIG_CHECK_SECONDS)."""

import logging

from aigateway.redis import redis_sync

CONFIG_VERSION_KEY = "gw:config:version"
logger = logging.getLogger(__name__)


def config_version_bump() -> None:
    try:
        redis_sync().incr(CONFIG_VERSION_KEY)
    except Exception as exc:  # Redis down: caches still expire by TTL.
        logger.warning("could not bump config version: %s", type(exc).__name__)
