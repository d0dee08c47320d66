"""The admitted calls in flight in this process, kept alive on one timer.

A concurrency lease and a usage "started" marker expire unless renewed, so a process that dies frees its
slots and its calls are booked as lost. Every admitted call is registered here from its admission to its
finish, and one task per event loop renews all of them together every third of the shorter expiry: a long
call keeps its slot and its marker whether it streams or not, and whether or not its provider is sending.
"""

import asyncio
import logging
import weakref

from django.conf import settings

from accounts.limits import limits_leases_refresh
from accounts.usage import usage_started_refresh_many

logger = logging.getLogger(__name__)


def renew_interval() -> float:
    """Seconds between renewals: a third of the shorter of the lease TTL and the marker's lost-after time."""
    return min(settings.GATEWAY_LEASE_TTL_SECONDS, settings.GATEWAY_USAGE_LOST_AFTER_SECONDS) / 3


class InFlight:
    """The calls of one event loop that hold a lease or a marker, and the task that renews them."""

    def __init__(self) -> None:
        self.calls: dict[str, object] = {}
        self.task: asyncio.Task | None = None

    def add(self, call) -> None:
        self.calls[call.request_id] = call
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._renew_while_busy())

    def discard(self, call) -> None:
        self.calls.pop(call.request_id, None)

    async def _renew_while_busy(self) -> None:
        while self.calls:
            await asyncio.sleep(renew_interval())
            await self.renew()

    async def renew(self) -> None:
        """One renewal of every call in flight (both stores; a failure is logged, the calls go on)."""
        calls = list(self.calls.values())
        if not calls:
            return
        leases = [(call.ctx, call.admission) for call in calls if call.admission is not None]
        try:
            await asyncio.gather(
                limits_leases_refresh(leases), usage_started_refresh_many([call.request_id for call in calls])
            )
        except Exception as exc:
            logger.warning("renewing %d calls in flight failed: %s", len(calls), type(exc).__name__)


_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InFlight]" = weakref.WeakKeyDictionary()


def in_flight() -> InFlight:
    """This event loop's calls in flight."""
    loop = asyncio.get_running_loop()
    registry = _by_loop.get(loop)
    if registry is None:
        registry = _by_loop[loop] = InFlight()
    return registry
