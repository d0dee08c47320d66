"""ASGI lifespan: close the shared upstream connection pools when the server shuts down."""

import logging

logger = logging.getLogger(__name__)


async def lifespan_app(scope, receive, send) -> None:
    from providers.upstream import upstream_clients_close

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await upstream_clients_close()
            except Exception as exc:
                logger.warning("closing upstream clients failed: %s", type(exc).__name__)
            await send({"type": "lifespan.shutdown.complete"})
            return
