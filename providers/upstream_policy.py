"""Which upstream addresses a provider's base URL may reach.

A base URL is an address the gateway connects to from inside its own network, so an operator typo
or a hostile admin must not turn it into a way to read a cloud metadata service. Refused:
- schemes other than http and https, always;
- link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services live there), known
  metadata addresses elsewhere (fd00:ec2::254, Alibaba's 100.100.100.200, Azure's 168.63.129.16),
  the unspecified address (0.0.0.0, ::) and multicast, unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS;
- loopback when GATEWAY_ALLOW_LOOPBACK_UPSTREAMS is off and DEBUG is off (it is on by default: a
  local Ollama, vLLM or the simulator is a normal upstream). Private networks (10/8, 192.168/16,
  ...) stay allowed: self-hosted model servers live there.

The check runs where a base URL is written (Provider.clean: admin and the YAML import) and where a
connection is opened: `UpstreamResolver` checks every address the upstream client is about to connect
to (so a name that later resolves somewhere else is still caught), and `upstream_request_check` refuses
a literal address or a metadata host name before the request takes a connection slot.

Through a forward proxy the policy is about the target, not the proxy (an operator's choice, often on a
private or loopback address): the target's literal address and metadata names are refused as above, and
the proxy resolves the target's name, so its own egress rules decide what that name may reach.
"""

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings

logger = logging.getLogger(__name__)
ALLOWED_SCHEMES = ("http", "https")
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16", "169.254.169.254")
)
# Names that only resolve inside a cloud, to its metadata service.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# How long a host name's addresses are kept. getaddrinfo does not report the DNS TTL, so this is a short
# cap: a provider moving its addresses is followed within seconds, and a warm host costs no lookup.
DNS_CACHE_SECONDS = 10.0


class UpstreamAddressRefused(OSError):
    """The upstream address is not one the gateway may connect to (raised inside the HTTP client)."""


class AddressRefused(httpx.ConnectError):
    """What callers of the upstream client see when the policy refused the address: a connect error
    (the relay fails over, the probe marks the provider down) whose `problem` says why."""

    def __init__(self, problem: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(f"upstream address refused: {problem}", request=request)
        self.problem = problem


def _loopback_allowed() -> bool:
    return settings.DEBUG or settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS


def address_problem(address: IPAddress) -> str | None:
    """Why the gateway may not connect to this address, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        if _loopback_allowed():
            return None
        return f"{address} is a loopback address (set GATEWAY_ALLOW_LOOPBACK_UPSTREAMS to allow it)"
    if settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS:
        return None
    if address in METADATA_ADDRESSES:
        kind = "a cloud metadata address"
    elif address.is_link_local:
        kind = "a link-local address (where cloud metadata services live)"
    elif address.is_unspecified:
        kind = "the unspecified address"
    elif address.is_multicast:
        kind = "a multicast address"
    else:
        return None
    return f"{address} is {kind} (set GATEWAY_ALLOW_PRIVATE_UPSTREAMS to allow it)"


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def base_url_problem(url: str) -> str | None:
    """Why a provider may not use this base URL, or None. Host names are checked when they resolve."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return f"must use http or https, not {parts.scheme or 'no scheme'}"
    if not host:
        return "has no host"
    address = _literal_address(host)
    if address is not None:
        problem = address_problem(address)
        return f"points at {problem}" if problem else None
    if host.rstrip(".").lower() in METADATA_HOSTS and not settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS:
        return f"points at {host}, a cloud metadata service (set GATEWAY_ALLOW_PRIVATE_UPSTREAMS to allow it)"
    return None


class UpstreamResolver(AbstractResolver):
    """The upstream client's resolver (aiohttp's interface): host names to addresses through the loop's
    getaddrinfo, each answer kept DNS_CACHE_SECONDS, and a host refused when any of its addresses is one
    the policy forbids. The answers are cached, the verdict is not: a changed setting applies to the next
    connection. `exempt` names hosts that are not upstreams but the way to them (forward proxies): their
    addresses are the operator's choice and are not checked."""

    def __init__(self, *, ttl: float = DNS_CACHE_SECONDS, exempt: Iterable[str] = ()) -> None:
        self._ttl = ttl
        self._exempt = frozenset(host.lower() for host in exempt)
        self._answers: dict[tuple[str, int, int], tuple[float, list[ResolveResult]]] = {}
        self._lookups: dict[tuple[str, int, int], asyncio.Task] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        results = await self._addresses(host, port, family)
        if host.lower() in self._exempt:
            return results
        for result in results:
            problem = address_problem(ipaddress.ip_address(result["host"].split("%", 1)[0]))
            if problem is not None:
                # Clients see a plain connect failure; the reason is for the operator.
                logger.warning("upstream address refused: host %s resolves to %s", host, problem)
                raise UpstreamAddressRefused(f"upstream host {host} resolves to {problem}")
        return results

    async def close(self) -> None:
        for lookup in self._lookups.values():
            lookup.cancel()

    async def _addresses(self, host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        key = (host, port, int(family))
        cached = self._answers.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            # Connections opening to one host at once share one lookup.
            lookup = asyncio.get_running_loop().create_task(self._lookup(host, port, family))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        results = await asyncio.shield(lookup)
        if len(self._answers) > 1024:
            self._answers.clear()
        self._answers[key] = (time.monotonic() + self._ttl, results)
        return results

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        results: list[ResolveResult] = []
        seen = set()
        for info_family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            if info_family == socket.AF_INET6 and sockaddr[3]:
                address = f"{address}%{sockaddr[3]}"
            if address not in seen:
                seen.add(address)
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=address,
                        port=int(sockaddr[1]),
                        family=info_family,
                        proto=proto,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        if not results:
            raise OSError(f"{host} resolved to no address")
        return results


@lru_cache(maxsize=256)
def _host_problem(host: str, loopback: bool, private: bool) -> str | None:
    # The settings are part of the cache key so a changed setting takes effect at once.
    address = _literal_address(host)
    if address is not None:
        return address_problem(address)
    if not private and host.rstrip(".").lower() in METADATA_HOSTS:
        return f"{host} is a cloud metadata service (set GATEWAY_ALLOW_PRIVATE_UPSTREAMS to allow it)"
    return None


async def upstream_request_check(request: httpx.Request) -> None:
    """httpx request hook: refuse a literal upstream address or a metadata host name the policy forbids,
    as a connect error."""
    _host_check(request.url.host, request)


def upstream_url_check(url: str) -> None:
    """The same check for a request sent without an httpx.Request (providers.upstream.upstream_open)."""
    _host_check(_url_host(url), None)


@lru_cache(maxsize=1024)
def _url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _host_check(host: str, request: httpx.Request | None) -> None:
    problem = _host_problem(host, _loopback_allowed(), settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS)
    if problem is not None:
        logger.warning("upstream address refused: %s", problem)
        raise AddressRefused(problem, request=request)
