"""The Celery beat scheduler: celery-redbeat's, which keeps the schedule and a lock in Redis so that any number
of beats (standalone or embedded in workers, on any hosts) send each periodic task once per period: the beat
holding the lock sends, the others wait for it.

Made to outlast Redis being unreachable for a while, as the rest of the gateway does: redbeat's own scheduler
lets a Redis error end the beat (an embedded one then stays gone while its worker runs on). Here a failed tick
is tried again a second later, a beat that could not take the lock at start (Redis down) waits for it at its
next tick, a beat whose lock lapsed meanwhile (another beat may hold it now) sends nothing until it has taken
the lock again, and a schedule that Redis lost (a restart without persistence) is written again: redbeat
writes it only when a beat starts, and would otherwise send nothing until a restart.
"""

import logging
import time
from types import SimpleNamespace

from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# Seconds between tries while Redis does not answer.
REDIS_RETRY_SECONDS = 1.0
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


class GatewayBeatScheduler(RedBeatScheduler):
    def __init__(self, app, *args, **kwargs) -> None:
        # The settings reach Celery namespaced (CELERY_REDBEAT_*), and a beat embedded in a worker lists them
        # only so; redbeat asks whether some are set by their bare names, and would fall back to the broker's.
        for name in ("redbeat_redis_url", "redbeat_redis_options", "redbeat_redis_use_ssl"):
            value = app.conf.get(name)
            if value is not None:
                app.conf[name] = value
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        # Runs when the beat starts; `make run` starts the worker (and its beat) beside the embedded Redis.
        while True:
            try:
                super().setup_schedule()
                return
            except _UNREACHABLE as exc:
                logger.warning("beat: Redis unreachable (%s); trying again", type(exc).__name__)
                time.sleep(REDIS_RETRY_SECONDS)

    def tick(self, *args, **kwargs) -> float:
        try:
            if self.lock_key and self.lock is None:
                # Blocks until this beat holds the lock (another beat may be sending meanwhile).
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            if not get_redis(self.app).exists(self.app.redbeat_conf.schedule_key):
                logger.warning("beat: the schedule is missing from Redis; writing it again")
                super().setup_schedule()
            return super().tick(*args, **kwargs)
        except LockError:
            logger.warning("beat: the schedule lock lapsed; sending nothing until this beat holds it again")
            self.lock = None
            return REDIS_RETRY_SECONDS
        except _UNREACHABLE as exc:
            logger.warning("beat: Redis unreachable (%s); trying again", type(exc).__name__)
            return REDIS_RETRY_SECONDS

    def close(self) -> None:
        try:
            super().close()
        except _UNREACHABLE + (LockError,) as exc:
            # The lock lapses by itself within GATEWAY_BEAT_LOCK_SECONDS.
            logger.warning("beat: could not release the schedule lock (%s)", type(exc).__name__)
            self.lock = None
