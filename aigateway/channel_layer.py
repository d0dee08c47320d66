"""The Channels layer: channels_redis's Redis layer on the gateway's kind of pool (bounded, blocking, through the
sentinels when configured), whose receive loop outlasts Redis being unreachable.

Every consumer waits on the layer for messages to its channel (a session's logout reaches its sockets this way).
In channels_redis a Redis error in that wait ends the consumer, and with it the websocket; here the wait is
taken up again once Redis answers (a failover, a restart), so sockets survive what the HTTP API survives.
"""

import asyncio
import logging
import time

from channels_redis.core import RedisChannelLayer
from redis.exceptions import RedisError

from aigateway.redis import redis_async_pool

logger = logging.getLogger(__name__)

_RETRY_FIRST_SECONDS = 0.25
_RETRY_MAX_SECONDS = 2.0
_WARNING_INTERVAL_SECONDS = 10.0


class GatewayChannelLayer(RedisChannelLayer):
    _last_warning = 0.0

    def create_pool(self, index):
        host = dict(self.hosts[index])
        return redis_async_pool(host, socket_timeout=host.pop("socket_timeout"), size=host.pop("max_connections"))

    async def receive_single(self, channel):
        delay = _RETRY_FIRST_SECONDS
        while True:
            try:
                return await super().receive_single(channel)
            except (RedisError, OSError) as exc:
                self._warn(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning("channel layer: Redis unreachable (%s); waiting for it", type(exc).__name__)
