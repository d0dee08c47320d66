"""ASGI lifespan. At startup: put the drain and graceful-stop trigger in front of the server's SIGTERM/SIGINT
handlers (see aigateway.shutdown). At shutdown (after the server has waited for open connections): let
spawned usage pushes and lease settles finish, give usage events held through a Redis outage a last
chance to reach the queue, then close the upstream connection pools."""

import asyncio
import gc
import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)

# How long a stopping process waits for usage events it holds (Redis was unreachable) to be queued.
HELD_USAGE_WAIT_SECONDS = 5.0


async def _held_usage_wait(timeout: float) -> None:
    from accounts.usage import usage_retry_buffer_size

    deadline = time.monotonic() + timeout
    while usage_retry_buffer_size() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    held = usage_retry_buffer_size()
    if held:
        logger.error("stopping with %d usage events that could not be queued (redis unreachable)", held)


async def lifespan_app(scope, receive, send) -> None:
    from aigateway.metrics import metrics_process_exit
    from aigateway.shutdown import shutdown_signals_install, shutdown_stopped_mark
    from aigateway.tracing import tracing_flush
    from providers.upstream import upstream_clients_close
    from streaming.relay import background_drain
    from streaming.resumable import resumable_drain

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            shutdown_signals_install(settings.GATEWAY_SHUTDOWN_GRACE_SECONDS, settings.GATEWAY_DRAIN_SECONDS)
            # Whatever the server built up to here lives as long as the process too (see asgi.py).
            gc.collect()
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await resumable_drain()
                await background_drain()
                await _held_usage_wait(HELD_USAGE_WAIT_SECONDS)
                shutdown_stopped_mark()
                await upstream_clients_close()
            except Exception as exc:
                logger.warning("closing upstream clients failed: %s", type(exc).__name__)
            try:
                metrics_process_exit()
            except Exception as exc:
                logger.warning("writing metrics at exit failed: %s", type(exc).__name__)
            # The spans of the last requests, exported before the process goes (a worker may skip atexit).
            tracing_flush()
            await send({"type": "lifespan.shutdown.complete"})
            return
