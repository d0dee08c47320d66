"""ASGI lifespan: at shutdown, let spawned usage pushes finish, then close the upstream connection pools."""

import logging

logger = logging.getLogger(__name__)


async def lifespan_app(scope, receive, send) -> None:
    from providers.upstream import upstream_clients_close
    from streaming.relay import background_drain

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await background_drain()
                await upstream_clients_close()
            except Exception as exc:
                logger.warning("closing upstream clients failed: %s", type(exc).__name__)
            await send({"type": "lifespan.shutdown.complete"})
            return
