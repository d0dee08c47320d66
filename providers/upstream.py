"""One shared httpx.AsyncClient per provider (pool limits and timeouts from its row).

Clients are created lazily per event loop, replaced when the provider's settings change, and
closed at shutdown (ASGI lifespan) or when replaced.
"""

import asyncio
import logging

import httpx

from providers.aiohttp_transport import AiohttpTransport
from providers.routing import ProviderRoute

logger = logging.getLogger(__name__)

_clients: dict[tuple[int, int], tuple[ProviderRoute, httpx.AsyncClient]] = {}


def _client_build(provider: ProviderRoute) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=provider.timeout_connect, read=provider.timeout_read, write=30.0, pool=30.0)
    transport = AiohttpTransport(max_connections=provider.max_connections)
    # identity: a compressing upstream (or proxy) would buffer stream events inside its compressor.
    return httpx.AsyncClient(
        timeout=timeout,
        transport=transport,
        headers={"accept-encoding": "identity"},
        follow_redirects=False,
        trust_env=False,
    )


def upstream_client(provider: ProviderRoute) -> httpx.AsyncClient:
    key = (provider.id, id(asyncio.get_running_loop()))
    entry = _clients.get(key)
    if entry is not None and entry[0] == provider:
        return entry[1]
    client = _client_build(provider)
    _clients[key] = (provider, client)
    if entry is not None:
        # Settings changed: let in-flight requests finish on the old pool, then close it.
        asyncio.get_running_loop().call_later(provider.timeout_read + 5, _close_later, entry[1])
    return client


def _close_later(client: httpx.AsyncClient) -> None:
    asyncio.ensure_future(client.aclose())


async def upstream_clients_close() -> None:
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _clients if k[1] == loop_id]:
        _, client = _clients.pop(key)
        await client.aclose()
