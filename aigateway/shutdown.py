"""Graceful shutdown of a gateway process: once told to stop (SIGTERM), streams in flight get
`GATEWAY_SHUTDOWN_GRACE_SECONDS` to finish on their own; after that the relay ends each one with an
error event in its client's dialect, so every client sees a clean end and every call is recorded."""

import time

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
