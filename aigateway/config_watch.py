"""In-process caches (keys, routes) register here and are dropped when the config version in Redis
changes. The version is read at most once per GATEWAY_CONFIG_CHECK_SECONDS, so a warm request
usually costs nothing and a disabled key or deployment stops working everywhere within seconds.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from django.conf import settings

from aigateway.config_version import CONFIG_VERSION_KEY
from aigateway.redis import redis_async, redis_sync

logger = logging.getLogger(__name__)


class ConfigWatch:
    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self._version: bytes | None = None
        self._next_check = 0.0

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _due(self) -> bool:
        return time.monotonic() >= self._next_check

    def _apply(self, version: bytes | None) -> None:
        self._next_check = time.monotonic() + settings.GATEWAY_CONFIG_CHECK_SECONDS
        if version != self._version:
            self._version = version
            for callback in self._callbacks:
                callback()

    async def check(self) -> None:
        if not self._due():
            return
        try:
            version = await redis_async().get(CONFIG_VERSION_KEY)
        except Exception as exc:
            # Redis unreachable: keep serving from cache, try again next interval.
            logger.warning("config version check failed: %s", type(exc).__name__)
            self._next_check = time.monotonic() + settings.GATEWAY_CONFIG_CHECK_SECONDS
            return
        self._apply(version)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py completes a command under way and swallows a cancellation that came meanwhile (the
            # client left): honour it, or the request would run on for nobody.
            raise asyncio.CancelledError

    def check_sync(self) -> None:
        if not self._due():
            return
        try:
            version = redis_sync().get(CONFIG_VERSION_KEY)
        except Exception as exc:
            logger.warning("config version check failed: %s", type(exc).__name__)
            self._next_check = time.monotonic() + settings.GATEWAY_CONFIG_CHECK_SECONDS
            return
        self._apply(version)

    def invalidate(self) -> None:
        """Force a reload on the next check (used by tests and after local writes)."""
        self._next_check = 0.0
        self._version = object()  # type: ignore[assignment]


config_watch = ConfigWatch()
