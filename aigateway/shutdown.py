"""Graceful shutdown of a gateway process: once told to stop (SIGTERM), streams in flight get
`GATEWAY_SHUTDOWN_GRACE_SECONDS` to finish on their own; after that the relay ends each one with an
error event in its client's dialect, so every client sees a clean end and every call is recorded.

The ASGI server owns the stop itself: uvicorn catches SIGTERM/SIGINT with `signal.signal` before the
lifespan starts, then stops accepting connections and waits for the open ones (at most
`--timeout-graceful-shutdown` seconds, which must exceed the grace). `shutdown_signals_install`, run at
lifespan startup, puts a handler in front of the server's that starts the grace period and then calls
the server's handler, so both happen on the same signal.
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


def shutdown_reset() -> None:
    global _deadline, _expired
    _deadline = None
    _expired = False
    _waiting.clear()


class _GracefulStop:
    """A signal handler that starts the grace period, then hands the signal to the server's handler."""

    def __init__(self, grace_seconds: float, server_handler) -> None:
        self.grace_seconds = grace_seconds
        self.server_handler = server_handler

    def __call__(self, signum, frame) -> None:
        first = _deadline is None
        shutdown_begin(self.grace_seconds)
        if first:
            logger.warning(
                "received %s: no new connections; streams in flight have %.0fs to finish",
                signal.Signals(signum).name,
                self.grace_seconds,
            )
        self.server_handler(signum, frame)


def shutdown_signals_install(grace_seconds: float) -> list[str]:
    """Chain the grace period in front of the server's SIGTERM/SIGINT handlers; returns the signals done.

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
        signal.signal(signum, _GracefulStop(grace_seconds, current))
        installed.append(signal.Signals(signum).name)
    return installed
