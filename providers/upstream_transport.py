"""The transport of the upstream clients: httpx's API (one `httpx.AsyncClient` per provider, httpx
exceptions, `Response.aiter_bytes`) over aiohttp's client (keep-alive pool, C HTTP parser, TLS, forward
proxies, happy eyeballs), with a bounded number of connections per provider and the egress settings:
a proxy (the provider's, else HTTPS_PROXY / HTTP_PROXY / NO_PROXY), the TLS trust (the system store,
which honours SSL_CERT_FILE, or the provider's CA bundle) and a client certificate.
"""

import asyncio
import os
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import aiohttp
import aiohttp.abc
import httpx
import yarl
from aiohttp.payload import BytesPayload

from providers.upstream_policy import AddressRefused, UpstreamAddressRefused, UpstreamResolver

__all__ = [
    "CLIENT_SET_HEADERS",
    "HAPPY_EYEBALLS_DELAY",
    "PoolExhausted",
    "UpstreamResponseStream",
    "UpstreamTransport",
    "ssl_context_build",
]

# Headers the client writes itself, from the URL and the body; a caller's copies are dropped.
CLIENT_SET_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Seconds before a second address of a host is tried while the first is still connecting (RFC 8305).
HAPPY_EYEBALLS_DELAY = 0.25
# A response header line or field larger than this is an upstream gone wrong, not a response.
MAX_HEADER_BYTES = 64 * 1024
# The codings aiohttp decodes as the body arrives, a bounded piece at a time (aiohttp 3.14 decompresses
# with a max_length and stops while its reader is behind, so a compression bomb is never inflated whole).
_DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
# A request body this small always fits the socket's send buffer: its write cannot stall.
_UNGUARDED_BODY_BYTES = 64 * 1024


class PoolExhausted(httpx.PoolTimeout):
    """Every connection of the provider's pool stayed busy for the whole pool timeout.

    Not a connect timeout: the provider may be perfectly healthy, it is only at the capacity the
    gateway allows it."""

    def __init__(self, provider: str, busy: int, waited: float) -> None:
        super().__init__(f"provider {provider} is at capacity ({busy} connections busy, waited {waited:.1f}s)")
        self.provider = provider
        self.busy = busy
        self.waited = waited


@lru_cache(maxsize=4)
def _system_ssl_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are only the cache key: OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR itself.
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def system_ssl_context() -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR when set), certificate and host name checks on."""
    return _system_ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@lru_cache(maxsize=64)
def ssl_context_build(*, ca_bundle: str = "", client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    """The TLS context of one provider: `ca_bundle` (PEM) trusted instead of the system store when given,
    and `client_cert` with `client_key` (PEM) presented to an upstream that asks for one (mTLS)."""
    if not (ca_bundle or client_cert):
        return system_ssl_context()
    if ca_bundle:
        context = ssl.create_default_context(cadata=ca_bundle)
    else:
        context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if client_cert:
        # OpenSSL loads a key pair from files only: a private directory, gone as soon as it is read.
        with tempfile.TemporaryDirectory(prefix="gw-mtls-") as directory:
            cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
            for path, text in ((cert_path, client_cert), (key_path, client_key or client_cert)):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(text)
            context.load_cert_chain(cert_path, key_path)
    return context


def _proxy_split(proxy_url: str) -> tuple[str, dict[str, str]]:
    """A proxy URL without its credentials, and the Proxy-Authorization header they make."""
    parts = urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    bare = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    if parts.username is None:
        return bare, {}
    return bare, {
        "Proxy-Authorization": aiohttp.encode_basic_auth(unquote(parts.username), unquote(parts.password or ""))
    }


def _proxy_host(proxy_url: str) -> str:
    return urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url).hostname or ""


@lru_cache(maxsize=1024)
def _url_origin(url: str) -> tuple[str, str, str]:
    """(scheme, host, scheme://host[:port]) of a URL, for proxy choice and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts.scheme.lower(), host, f"{parts.scheme}://{netloc}"


@lru_cache(maxsize=4096)
def _yarl_url(url: str) -> yarl.URL:
    # Parsed once per distinct URL (aiohttp would parse the string on every request).
    return yarl.URL(url)


@lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)


_HTTP_VERSIONS = {aiohttp.HttpVersion11: b"HTTP/1.1", aiohttp.HttpVersion10: b"HTTP/1.0"}


class _Proxies:
    """Which forward proxy a request goes through: the provider's for every request when it has one;
    else the environment's (HTTPS_PROXY for https, HTTP_PROXY for http, none for hosts NO_PROXY names),
    read when the client is built."""

    def __init__(self, proxy_url: str, environment: Mapping[str, str] | None) -> None:
        self.explicit = _proxy_split(proxy_url) if proxy_url else None
        self._environment = {k: v for k, v in (environment or {}).items() if k in ("http", "https", "no") and v}
        self._by_scheme = {
            scheme: _proxy_split(url) for scheme, url in self._environment.items() if scheme in ("http", "https")
        }
        self._bypass: dict[str, bool] = {}
        self.hosts = frozenset(
            _proxy_host(url) for url in [proxy_url, *(v for k, v in self._environment.items() if k != "no")] if url
        )

    def for_url(self, url: str) -> tuple[str, dict[str, str]] | None:
        if self.explicit is not None:
            return self.explicit
        if not self._by_scheme:
            return None
        scheme, host, _ = _url_origin(url)
        proxy = self._by_scheme.get(scheme)
        if proxy is None:
            return None
        bypass = self._bypass.get(host)
        if bypass is None:
            bypass = bool(urllib.request.proxy_bypass_environment(host, self._environment))
            if len(self._bypass) > 1024:
                self._bypass.clear()
            self._bypass[host] = bypass
        return None if bypass else proxy


class _Slot:
    """One connection slot of a transport's pool, given back exactly once."""

    __slots__ = ("_transport", "_held")

    def __init__(self, transport: "UpstreamTransport") -> None:
        self._transport = transport
        self._held = True
        transport.busy += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._transport.busy -= 1
            self._transport._pool.release()


def _transport_error(exc: BaseException, origin: str, proxy: str | None) -> Exception | None:
    """The httpx exception for an aiohttp failure (None: not one of aiohttp's). Messages name the origin
    and the proxy's address, never a proxy's credentials or the request's path."""
    via = f" through the proxy {proxy}" if proxy else ""
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, UpstreamAddressRefused):
            return AddressRefused(str(cause))
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return httpx.ConnectError(f"TLS certificate of {origin} not accepted: {exc.certificate_error}")
        if isinstance(exc, aiohttp.ClientSSLError):
            return httpx.ConnectError(f"TLS with {origin} failed: {cause}")
        detail = os.strerror(cause.errno) if cause.errno else str(cause) or type(cause).__name__
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return httpx.ProxyError(f"cannot connect to the proxy {proxy} for {origin}: {detail}")
        return httpx.ConnectError(f"cannot connect to {origin}{via}: {detail}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(f"the proxy {proxy} refused the tunnel to {origin}: HTTP {exc.status} {exc.message}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(f"connecting to {origin}{via} timed out")
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"{origin} sent nothing within the read timeout")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(f"{origin} closed the connection without a complete response")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(f"{origin} closed the connection before the end of the body: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(f"malformed response from {origin}: {exc.message}")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(f"invalid upstream URL for {origin}")
    if isinstance(exc, aiohttp.ClientError | ConnectionError):
        return httpx.ReadError(f"reading from {origin} failed: {exc or type(exc).__name__}")
    return None


class UpstreamResponseStream(httpx.AsyncByteStream):
    """A response body, yielded as it arrives (stream events are never held back) and decoded as it
    arrives when the upstream compressed it, holding its connection slot until closed."""

    __slots__ = ("_response", "_slot", "_url")

    def __init__(self, response: aiohttp.ClientResponse, slot: _Slot | None, url: str) -> None:
        self._response = response
        self._slot = slot
        self._url = url

    async def __aiter__(self):
        readany = self._response.content.readany
        try:
            while chunk := await readany():
                yield chunk
        except BaseException as exc:
            # Failed or cancelled (the client left): drop the connection now, the upstream stops.
            await self.aclose()
            error = _transport_error(exc, _url_origin(self._url)[2], None)
            if error is None:
                raise
            raise error from exc

    async def aclose(self) -> None:
        response = self._response
        try:
            if response.content.is_eof():
                response.release()
            else:
                # Not read to the end (client gone, error): drop the connection so the upstream stops.
                response.close()
        finally:
            if self._slot is not None:
                self._slot.release()
                self._slot = None


class UpstreamTransport(httpx.AsyncBaseTransport):
    """A pool of at most `max_connections` upstream connections.

    A request holds one slot from sending until its response is closed (a stream holds it for its
    whole length). Waiting for a slot is bounded by the request's `pool` timeout and fails with
    PoolExhausted; the `connect` timeout covers opening a connection (every address of the host, a
    proxy's tunnel, TLS). `on_pool_wait(waited, exhausted)` hears of every request that had to wait.
    `ssl_context` replaces the system's trust store; `proxy_url` sends every request through that
    proxy, else `trust_env` takes HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment; with
    `tls_problem` (the provider's TLS settings did not load) every https request fails with it. Host names
    resolve through the address policy's resolver (`resolver` replaces it), which leaves the proxies'
    own names unchecked."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 30.0,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        name: str = "upstream",
        on_pool_wait: Callable[[float, bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy_url: str = "",
        trust_env: bool = True,
        happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY,
        tls_problem: str | None = None,
    ) -> None:
        self._name = name
        self._on_pool_wait = on_pool_wait
        self._pool = asyncio.Semaphore(max_connections)
        # Connections in use right now.
        self.busy = 0
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._tls_problem = tls_problem
        self._happy_eyeballs_delay = happy_eyeballs_delay
        self._proxies = _Proxies(proxy_url, urllib.request.getproxies_environment() if trust_env else None)
        self._resolver = resolver if resolver is not None else UpstreamResolver(exempt=self._proxies.hosts)
        self._session: aiohttp.ClientSession | None = None

    def _session_get(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                # The slots above bound the connections; aiohttp's own limit would queue requests
                # under the connect timeout instead.
                limit=0,
                keepalive_timeout=self._keepalive_expiry,
                # The resolver keeps answers itself and checks the address policy on every connection.
                use_dns_cache=False,
                resolver=self._resolver,
                ssl=self._ssl_context or system_ssl_context(),
                happy_eyeballs_delay=self._happy_eyeballs_delay,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                # Codings are decoded as the body arrives, a bounded piece at a time; the gateway asks
                # for identity, so only an upstream that ignores it pays for this.
                auto_decompress=True,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Accept-Encoding": "identity"},
                skip_auto_headers=("User-Agent", "Content-Type", "Accept"),
                max_line_size=MAX_HEADER_BYTES,
                max_field_size=MAX_HEADER_BYTES,
            )
        return session

    async def _slot_acquire(self, timeout: float | None) -> _Slot:
        if not self._pool.locked():
            await self._pool.acquire()
            return _Slot(self)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._pool.acquire()
        except TimeoutError:
            waited = time.monotonic() - started
            if self._on_pool_wait is not None:
                self._on_pool_wait(waited, True)
            raise PoolExhausted(self._name, self.busy, waited) from None
        if self._on_pool_wait is not None:
            self._on_pool_wait(time.monotonic() - started, False)
        return _Slot(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw]
        body = await request.aread()
        return await self.send(request.method, str(request.url), headers, body, request.extensions.get("timeout", {}))

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, timeouts: dict
    ) -> httpx.Response:
        """One request from plain values (the relay's path, without building an httpx.Request): the
        response with its body unread, as an httpx.Response streaming from this pool. Headers the client
        sets itself (CLIENT_SET_HEADERS) are dropped; without `accept-encoding`, identity is asked for.
        `timeouts`: httpx's timeout extension (connect, write, read, pool)."""
        if self._tls_problem is not None and url.startswith("https:"):
            raise httpx.ConnectError(self._tls_problem)
        connect = timeouts.get("connect")
        timeout = _client_timeout(connect, timeouts.get("read"))
        proxy = self._proxies.for_url(url)
        proxy_url, proxy_headers = proxy if proxy is not None else (None, None)
        sent = [(name, value) for name, value in headers if name.lower() not in CLIENT_SET_HEADERS]
        if proxy_headers and not url.startswith("https:"):
            # A plain http request goes to the proxy itself (absolute-form): its credentials ride on it.
            # An https one is tunnelled, and they go on the CONNECT only (aiohttp's proxy_headers).
            sent.extend(proxy_headers.items())
            proxy_headers = None
        # aiohttp starts the read timeout once the body is written: a large body that the upstream does not
        # read is bounded here (connect, write and read in turn; small bodies fit the socket's buffer).
        guard = None
        if len(body) > _UNGUARDED_BODY_BYTES and None not in (connect, timeouts.get("write"), timeouts.get("read")):
            guard = connect + timeouts["write"] + timeouts["read"]
        slot = await self._slot_acquire(timeouts.get("pool"))
        try:
            request = self._session_get().request(
                method,
                _yarl_url(url),
                headers=sent,
                # A payload object: aiohttp skips its registry lookup for each request.
                data=BytesPayload(body, content_type=None) if body else None,
                timeout=timeout,
                allow_redirects=False,
                proxy=proxy_url,
                proxy_headers=proxy_headers,
            )
            if guard is None:
                response = await request
            else:
                try:
                    async with asyncio.timeout(guard):
                        response = await request
                except TimeoutError as exc:
                    if isinstance(exc, aiohttp.ServerTimeoutError):
                        raise
                    raise httpx.WriteTimeout(f"sending the request to {_url_origin(url)[2]} stalled") from None
        except httpx.WriteTimeout:
            slot.release()
            raise
        except BaseException as exc:
            slot.release()
            error = _transport_error(exc, _url_origin(url)[2], proxy_url)
            if error is None:
                if isinstance(exc, ValueError):
                    # A header aiohttp will not write (a line break in a name or value): nothing was sent.
                    raise httpx.LocalProtocolError(f"request to {_url_origin(url)[2]} refused: {exc}") from exc
                raise
            raise error from exc
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # aiohttp finishes a connect already under way and swallows a cancellation that came meanwhile
            # (the client left): honour it, or the request would run on for nobody.
            response.close()
            slot.release()
            raise asyncio.CancelledError
        raw_headers = response.raw_headers
        coding = response.headers.get("Content-Encoding", "").strip().lower()
        if coding and coding != "identity":
            if coding not in _DECODED_CODINGS:
                response.close()
                slot.release()
                origin = _url_origin(url)[2]
                raise httpx.RemoteProtocolError(
                    f"{origin} answered with content-encoding {coding!r}, which the gateway does not decode"
                )
            # aiohttp decodes the body: its headers must not make httpx decode it again or trust its length.
            raw_headers = [
                (name, value)
                for name, value in raw_headers
                if name.lower() not in (b"content-encoding", b"content-length")
            ]
        return httpx.Response(
            status_code=response.status,
            headers=raw_headers,
            stream=UpstreamResponseStream(response, slot, url),
            extensions={
                "http_version": _HTTP_VERSIONS.get(response.version) or b"HTTP/%d.%d" % tuple(response.version),
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
