"""Graceful shutdown of a gateway process: once told to stop (SIGTERM), streams in flight get
`GATEWAY_SHUTDOWN_GRACE_SECONDS` to finish on their own; after that the relay ends each one with an
error event in its client's dialect, so every client sees a clean end and every call is recorded.

The ASGI server owns the stop itself: uvicorn catches SIGTERM/SIGINT with `signal.signal` before the
lifespan starts, then stops accepting connections and waits for the open ones (at most
`--timeout-graceful-shutdown` seconds, which must exceed the grace). `shutdown_signals_install`, run at
lifespan startup, puts a handler in front of the server's that starts the grace period and then calls
the server's handler, so both happen on the same signal.
"""

import logging
import signal
import threading
import time

logger = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_deadline: float | None = None


def shutdown_begin(grace_seconds: float) -> None:
    """Start the grace period (idempotent: a second signal does not extend it)."""
    global _deadline
    if _deadline is None:
        _deadline = time.monotonic() + max(0.0, grace_seconds)


def shutdown_deadline() -> float | None:
    """The monotonic time by which streams in flight must end, or None while the process is serving."""
    return _deadline


def shutdown_reset() -> None:
    global _deadline
    _deadline = None


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
