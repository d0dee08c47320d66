"""The one upstream client of everything that leaves the gateway: one shared httpx.AsyncClient per
provider (pool limits, timeouts, proxy, TLS trust and client certificate from its row) for the relay,
count_tokens and the health probes, and one more with the deployment's defaults for webhooks.

Clients are created lazily per event loop, replaced when the provider's settings change, and
closed at shutdown (ASGI lifespan) or when replaced. A request that finds every connection of its
provider busy waits up to GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS, then fails with PoolExhausted
(the provider is at capacity, not timing out); the waits are logged and counted per provider.
Bodies the gateway reads whole (non-streamed answers, error bodies, probes, webhook answers) are read
up to GATEWAY_MAX_UPSTREAM_BODY_BYTES, counted as they are decoded.
"""

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import httpx
from django.conf import settings

from providers.routing import ProviderRoute
from providers.upstream_policy import upstream_request_check, upstream_url_check
from providers.upstream_transport import CLIENT_SET_HEADERS, PoolExhausted, UpstreamTransport, ssl_context_build

__all__ = [
    "PoolExhausted",
    "PoolWaits",
    "UpstreamAnswer",
    "UpstreamBodyTooLarge",
    "pool_wait_stats",
    "upstream_blocking",
    "upstream_body_read",
    "upstream_client",
    "upstream_clients_close",
    "upstream_fetch",
    "upstream_open",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_clients: dict[tuple[int, int], tuple[ProviderRoute, httpx.AsyncClient]] = {}
# Per client: what `upstream_open` needs to reach its pool directly.
_lean: dict[int, "_LeanPath"] = {}

# Traffic that belongs to no provider (budget alert webhooks): the deployment's egress (the environment's
# proxy, the system's trust store) and the address policy, like every provider without settings of its own.
WEBHOOKS = ProviderRoute(
    id=0,
    name="webhooks",
    dialect="",
    base_url="",
    api_key="",
    extra_headers=(),
    timeout_connect=3.0,
    timeout_read=5.0,
    max_connections=16,
)


class UpstreamBodyTooLarge(httpx.TransportError):
    """An upstream body the gateway reads whole went past GATEWAY_MAX_UPSTREAM_BODY_BYTES (decoded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream response body is larger than the {limit}-byte limit")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class _LeanPath:
    transport: UpstreamTransport
    timeouts: dict
    # The client's default headers (lower-cased name: (name, value)), sent unless the request sets its own.
    headers: dict[str, tuple[str, str]]


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
    ssl_context = tls_problem = None
    if provider.ca_bundle or provider.client_cert:
        try:
            ssl_context = ssl_context_build(
                ca_bundle=provider.ca_bundle, client_cert=provider.client_cert, client_key=provider.client_key
            )
        except (ssl.SSLError, ValueError, OSError) as exc:
            # Its https requests fail as connect errors (failover, probe down), not as a traceback.
            tls_problem = f"the TLS settings of provider {provider.name} do not load ({type(exc).__name__})"
            logger.error("%s: check its CA bundle, client certificate and client key", tls_problem)
    transport = UpstreamTransport(
        max_connections=provider.max_connections,
        name=provider.name,
        on_pool_wait=_pool_wait_recorder(provider),
        ssl_context=ssl_context,
        tls_problem=tls_problem,
        # The provider's proxy wins; without one, HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply.
        proxy_url=provider.proxy_url,
        trust_env=True,
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
            name.lower(): (name, value)
            for name, value in client.headers.items()
            if name.lower() not in CLIENT_SET_HEADERS
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


async def upstream_open(
    provider: ProviderRoute,
    url: str,
    content: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
    timeouts: dict | None = None,
) -> httpx.Response:
    """Send `content` to `url` through the provider's pool; the response comes back with its body unread.

    What `upstream_client(provider).send(..., stream=True)` does, past httpx's client machinery (URL
    merging, cookie jar, auth flow, hooks: about a tenth of a relayed request's CPU): the same pool, default
    headers, timeouts, address policy and httpx errors. `timeouts` replaces some of the provider's."""
    lean = _lean[id(upstream_client(provider))]
    upstream_url_check(url)
    merged = dict(lean.headers)
    for name, value in headers.items():
        # Names are sent as the caller spelled them; one value per name, the caller's over the defaults.
        lower = name.lower()
        if lower not in CLIENT_SET_HEADERS:
            merged[lower] = (name, value)
    return await lean.transport.send(
        method, url, list(merged.values()), content, {**lean.timeouts, **timeouts} if timeouts else lean.timeouts
    )


async def upstream_body_read(response: httpx.Response, *, limit: int | None = None) -> bytes:
    """A response's whole body, at most `limit` bytes (GATEWAY_MAX_UPSTREAM_BODY_BYTES by default) counted
    as it is decoded; UpstreamBodyTooLarge past it (a declared length past it is refused before reading).
    The response is closed either way."""
    limit = settings.GATEWAY_MAX_UPSTREAM_BODY_BYTES if limit is None else limit
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise UpstreamBodyTooLarge(limit)
        parts: list[bytes] = []
        size = 0
        # The transport's stream: decoded already, in bounded pieces (httpx's decoders are not involved).
        async for part in response.stream:
            size += len(part)
            if size > limit:
                raise UpstreamBodyTooLarge(limit)
            parts.append(part)
        return b"".join(parts)
    finally:
        await response.aclose()


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    status_code: int
    reason_phrase: str
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


async def upstream_fetch(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: bytes = b"",
    provider: ProviderRoute = WEBHOOKS,
    timeout: httpx.Timeout | None = None,
    limit: int | None = None,
) -> UpstreamAnswer:
    """One whole request and answer through `provider`'s client (the webhooks' by default): its pool,
    proxy, TLS settings and the address policy, the body read up to `limit` (see upstream_body_read).
    httpx's exceptions on failure: AddressRefused (an httpx.ConnectError) for a refused address."""
    timeouts = {k: v for k, v in timeout.as_dict().items() if k in ("connect", "read")} if timeout else None
    response = await upstream_open(provider, url, content, headers, method=method, timeouts=timeouts)
    body = await upstream_body_read(response, limit=limit)
    return UpstreamAnswer(status_code=response.status_code, reason_phrase=response.reason_phrase, content=body)


def upstream_blocking(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work()` for a caller that is not async (Celery tasks, admin actions): in an event loop of its
    own, whose upstream clients are closed when it ends. From a thread whose loop is running, in another."""

    async def run() -> T:
        try:
            return await work()
        finally:
            await upstream_clients_close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upstream") as pool:
        return pool.submit(asyncio.run, run()).result()


def _close_later(client: httpx.AsyncClient) -> None:
    _lean.pop(id(client), None)
    asyncio.ensure_future(client.aclose())


async def upstream_clients_close() -> None:
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _clients if k[1] == loop_id]:
        _, client = _clients.pop(key)
        _lean.pop(id(client), None)
        await client.aclose()
