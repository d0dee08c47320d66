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
a literal address before the request takes a connection slot.
"""

import ipaddress
import logging
import socket
from functools import lru_cache
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from providers.http1 import Resolver

logger = logging.getLogger(__name__)
ALLOWED_SCHEMES = ("http", "https")
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16", "169.254.169.254")
)
# Names that only resolve inside a cloud, to its metadata service.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UpstreamAddressRefused(OSError):
    """The upstream address is not one the gateway may connect to."""


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


def url_connect_problem(url: str) -> str | None:
    """Why a blocking client (the health probe) may not connect to this URL: its base URL, or any
    address its host resolves to, breaks the policy. None when it may."""
    problem = base_url_problem(url)
    if problem is not None:
        return f"{url.split('?', 1)[0]} {problem}"
    host = urlsplit(url).hostname or ""
    if _literal_address(host) is not None:
        return None
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None  # the probe itself reports a name that does not resolve
    for info in infos:
        problem = address_problem(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        if problem is not None:
            return f"upstream host {host} resolves to {problem}"
    return None


class UpstreamResolver(Resolver):
    """The upstream client's resolver, refusing a host whose addresses include one the policy forbids.
    Answers are cached, the check is not: a changed setting applies to the next connection."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[dict]:
        results = await super().resolve(host, port, family)
        for result in results:
            problem = address_problem(ipaddress.ip_address(result["host"].split("%", 1)[0]))
            if problem is not None:
                # Clients see a plain connect failure; the reason is for the operator.
                logger.warning("upstream address refused: host %s resolves to %s", host, problem)
                raise UpstreamAddressRefused(f"upstream host {host} resolves to {problem}")
        return results


@lru_cache(maxsize=256)
def _host_problem(host: str, loopback: bool, private: bool) -> str | None:
    # The settings are part of the cache key so a changed setting takes effect at once.
    address = _literal_address(host)
    return address_problem(address) if address is not None else None


async def upstream_request_check(request: httpx.Request) -> None:
    """httpx request hook: refuse a literal upstream address the policy forbids, as a connect error."""
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
        raise httpx.ConnectError(f"upstream address refused: {problem}", request=request)
