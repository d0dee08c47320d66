"""One shared httpx.AsyncClient per provider (pool limits and timeouts from its row).

Clients are created lazily per event loop, replaced when the provider's settings change, and
closed at shutdown (ASGI lifespan) or when replaced. A request that finds every connection of its
provider busy waits up to GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS, then fails with PoolExhausted
(the provider is at capacity, not timing out); the waits are logged and counted per provider.
"""

import asyncio
import logging
from dataclasses import dataclass

import httpx
from django.conf import settings

from providers.routing import ProviderRoute
from providers.upstream_policy import UpstreamResolver, upstream_request_check, upstream_url_check
from providers.upstream_transport import CLIENT_SET_HEADERS, PoolExhausted, UpstreamTransport

__all__ = [
    "PoolExhausted",
    "PoolWaits",
    "pool_wait_stats",
    "upstream_client",
    "upstream_clients_close",
    "upstream_open",
]

logger = logging.getLogger(__name__)

_clients: dict[tuple[int, int], tuple[ProviderRoute, httpx.AsyncClient]] = {}
# Per client: what `upstream_open` needs to reach its pool directly.
_lean: dict[int, "_LeanPath"] = {}


@dataclass(frozen=True, slots=True)
class _LeanPath:
    transport: UpstreamTransport
    timeouts: dict
    # The client's default headers (lower-cased names), sent unless the request sets its own.
    headers: dict[str, str]


@dataclass
class PoolWaits:
    """How often requests to one provider waited for a pooled connection, in this process."""

    waits: int = 0
    exhausted: int = 0
    wait_seconds_total: float = 0.0
    wait_seconds_max: float = 0.0


_pool_waits: dict[str, PoolWaits] = {}


def pool_wait_stats() -> dict[str, PoolWaits]:
    """Per provider name: the requests that found its pool full (`waits`), those that gave up after
    the pool timeout (`exhausted`), and how long they waited. Counts since the process started."""
    return {name: PoolWaits(**vars(waits)) for name, waits in _pool_waits.items()}


def _pool_wait_recorder(provider: ProviderRoute):
    def record(waited: float, exhausted: bool) -> None:
        waits = _pool_waits.setdefault(provider.name, PoolWaits())
        waits.waits += 1
        waits.wait_seconds_total += waited
        waits.wait_seconds_max = max(waits.wait_seconds_max, waited)
        if exhausted:
            waits.exhausted += 1
            logger.warning(
                "provider %s is at capacity: all %d connections busy, gave up after waiting %.3fs",
                provider.name,
                provider.max_connections,
                waited,
            )
        else:
            logger.info(
                "provider %s pool full (%d connections): waited %.3fs for a connection",
                provider.name,
                provider.max_connections,
                waited,
            )

    return record


def _client_build(provider: ProviderRoute) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=provider.timeout_connect,
        read=provider.timeout_read,
        write=30.0,
        pool=settings.GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS,
    )
    transport = UpstreamTransport(
        max_connections=provider.max_connections,
        name=provider.name,
        on_pool_wait=_pool_wait_recorder(provider),
        # The address policy: every address is checked as it resolves (a literal one before it takes a slot too).
        resolver=UpstreamResolver(),
    )
    # identity: a compressing upstream (or proxy) would buffer stream events inside its compressor.
    client = httpx.AsyncClient(
        timeout=timeout,
        transport=transport,
        headers={"accept-encoding": "identity"},
        follow_redirects=False,
        trust_env=False,
        event_hooks={"request": [upstream_request_check]},
    )
    _lean[id(client)] = _LeanPath(
        transport=transport,
        timeouts=timeout.as_dict(),
        headers={
            name.lower(): value for name, value in client.headers.items() if name.lower() not in CLIENT_SET_HEADERS
        },
    )
    return client


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


async def upstream_open(provider: ProviderRoute, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST `content` to `url` through the provider's pool; the response comes back with its body unread.

    What `upstream_client(provider).send(..., stream=True)` does, past httpx's client machinery (URL
    merging, cookie jar, auth flow, hooks: about a tenth of a relayed request's CPU): the same pool, default
    headers, timeouts, address policy and httpx errors."""
    lean = _lean[id(upstream_client(provider))]
    upstream_url_check(url)
    merged = dict(lean.headers)
    for name, value in headers.items():
        merged[name.lower()] = value
    merged.pop("content-length", None)
    return await lean.transport.send("POST", url, list(merged.items()), content, lean.timeouts)


def _close_later(client: httpx.AsyncClient) -> None:
    _lean.pop(id(client), None)
    asyncio.ensure_future(client.aclose())


async def upstream_clients_close() -> None:
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _clients if k[1] == loop_id]:
        _, client = _clients.pop(key)
        _lean.pop(id(client), None)
        await client.aclose()
