"""Graceful shutdown of a gateway process, so that a rolling restart cuts nothing. Once told to stop (SIGTERM):

1. draining: `/ready` answers 503 at once while the process goes on serving every request, new connections
   included, for `GATEWAY_DRAIN_SECONDS`: the time a load balancer needs to notice and send new requests
   elsewhere;
2. stopping: the server stops accepting connections; streams in flight get `GATEWAY_SHUTDOWN_GRACE_SECONDS`
   to finish on their own; after that the relay ends each one with an error event in its client's dialect,
   so every client sees a clean end and every call is recorded.

The ASGI server owns the stop itself: uvicorn catches SIGTERM/SIGINT with `signal.signal` before the
lifespan starts, then stops accepting connections and waits for the open ones (at most
`--timeout-graceful-shutdown` seconds, which must exceed the grace). `shutdown_signals_install`, run at
lifespan startup, puts a handler in front of the server's that starts the drain, and once it is over starts
the grace period and calls the server's handler. A second signal during the drain ends it at once.
"""

import asyncio
import logging
import signal
import threading
import time
import weakref

logger = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_deadline: float | None = None
# Set at the first stop signal: the process no longer wants new requests (readiness fails) but still serves.
_draining = False
# Set when the lifespan shutdown closes the upstream pools: nothing can be served any more.
_stopped = False
# Set when the deadline's timer has fired: an event loop may run a timer slightly before the clock reaches
# its time (uvloop's timers have millisecond resolution), so "past the deadline" cannot be read off the
# clock alone by the requests that timer cancels.
_expired = False
# Requests still waiting for a provider's first byte: at the deadline they are cancelled with this
# message, and the relay answers them with a clean 503 instead of leaving them to the server's kill.
_waiting: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()
SHUTDOWN_CANCEL_MESSAGE = "gateway_shutdown"


def shutdown_begin(grace_seconds: float) -> None:
    """Start the grace period (idempotent: a second signal does not extend it)."""
    global _deadline
    if _deadline is None:
        _deadline = time.monotonic() + max(0.0, grace_seconds)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # Called from a signal handler: reach the loop the thread-safe way.
        loop.call_soon_threadsafe(_arm, loop, _deadline)


def _arm(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    loop.call_later(max(0.0, deadline - time.monotonic()), _cancel_waiting)


def _cancel_waiting() -> None:
    global _expired
    _expired = True
    for task in list(_waiting):
        if not task.done():
            task.cancel(SHUTDOWN_CANCEL_MESSAGE)


def shutdown_waiting_add(task: asyncio.Task) -> None:
    """`task` waits for a provider's first byte; past the deadline it is cancelled."""
    if _deadline is not None and time.monotonic() >= _deadline:
        task.get_loop().call_soon(task.cancel, SHUTDOWN_CANCEL_MESSAGE)
    _waiting.add(task)


def shutdown_waiting_done(task: asyncio.Task) -> None:
    _waiting.discard(task)


def shutdown_passed() -> bool:
    return _expired or (_deadline is not None and time.monotonic() >= _deadline)


def shutdown_deadline() -> float | None:
    """The monotonic time by which streams in flight must end, or None while the process is serving."""
    return _deadline


def shutdown_drain_begin() -> None:
    global _draining
    _draining = True


def shutdown_stopped_mark() -> None:
    global _stopped
    _stopped = True


def shutdown_phase() -> str:
    """What this process is doing: "serving", "draining" (a stop signal came; it still serves while load
    balancers notice), "stopping" (no new connections; streams in flight finish) or "stopped"."""
    if _stopped:
        return "stopped"
    if _deadline is not None:
        return "stopping"
    return "draining" if _draining else "serving"


def shutdown_reset() -> None:
    global _deadline, _expired, _draining, _stopped
    _deadline = None
    _expired = False
    _draining = False
    _stopped = False
    _waiting.clear()


class _GracefulStop:
    """A signal handler that starts the drain; when it is over (or at a second signal), starts the grace
    period and hands the signal to the server's handler. Later signals go to the server's handler directly
    (uvicorn: a second SIGINT stops at once)."""

    def __init__(self, grace_seconds: float, server_handler, drain_seconds: float = 0.0) -> None:
        self.grace_seconds = grace_seconds
        self.drain_seconds = drain_seconds
        self.server_handler = server_handler

    def __call__(self, signum, frame) -> None:
        if _deadline is not None:  # the server was told already (by this signal or the other)
            self.server_handler(signum, frame)
            return
        if _draining or self.drain_seconds <= 0:
            self._stop(signum)
            return
        shutdown_drain_begin()
        logger.warning(
            "received %s: not ready; still serving for %gs, then no new connections, and streams in flight "
            "have %gs to finish",
            signal.Signals(signum).name,
            self.drain_seconds,
            self.grace_seconds,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stop(signum)
            return
        # Called from a signal handler: reach the loop the thread-safe way.
        loop.call_soon_threadsafe(loop.call_later, self.drain_seconds, self._stop, signum)

    def _stop(self, signum) -> None:
        if _deadline is not None:
            return
        drained = _draining
        shutdown_drain_begin()
        shutdown_begin(self.grace_seconds)
        logger.warning(
            "%s %s: no new connections; streams in flight have %gs to finish",
            "drain over after" if drained else "received",
            signal.Signals(signum).name,
            self.grace_seconds,
        )
        self.server_handler(signum, None)


def shutdown_signals_install(grace_seconds: float, drain_seconds: float = 0.0) -> list[str]:
    """Chain the drain and the grace period in front of the server's SIGTERM/SIGINT handlers; returns the
    signals done.

    Only a handler installed in Python (uvicorn's) is chained: with the default action, or under a server
    that handles signals outside Python (Twisted under daphne stops its reactor itself), the grace period
    cannot run and nothing is changed. Signal handlers can only be set from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for signum in SHUTDOWN_SIGNALS:
        current = signal.getsignal(signum)
        if isinstance(current, _GracefulStop) or not callable(current) or current is signal.default_int_handler:
            continue
        signal.signal(signum, _GracefulStop(grace_seconds, current, drain_seconds))
        installed.append(signal.Signals(signum).name)
    return installed
