"""Polling for a condition another process makes true."""

import time


def eventually(check, *, timeout: float, what: str = "condition") -> float:
    """Seconds until `check()` is true; fails the test after `timeout` seconds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not true within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - started
