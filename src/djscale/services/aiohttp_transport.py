"""The async service transport's wire: an ``httpx`` transport that sends through aiohttp.

Why not ``httpx.AsyncHTTPTransport``: its pool (httpcore) costs CPU in proportion to the
open connections on *every* request. Profiled in the gateway under 16 concurrent
requests (py-spy, ``benchmarks/bench_services.py``), each request rescanned the pool
several times, asking anyio for every connection whether its socket was readable (a
dict of socket attributes built anew, ``getpeername`` and ``poll`` system calls), with a
nested loop over the pool on top: about 2 ms of CPU per proxied request. Even with that
scan gone, httpcore's anyio stream layer costs ~3 times what aiohttp's client does per
request (measured side by side on this machine: ~560 vs ~180 us of CPU at 16 concurrent
requests), so the gateway hop would still cost several backend calls.

Why not the ``httpx-aiohttp`` package: it maps every ``aiohttp.ClientConnectionError``
(a server that drops the connection *after* receiving the request included) to
``httpx.ConnectTimeout``, which :mod:`djscale.services.transport` rightly takes for "the
request never left", so a POST could be sent twice; and its session keeps cookies.

What this module owns: one ``aiohttp.ClientSession`` per transport (created in the event
loop of the first request; one transport serves one loop, as httpx's does), connection
pooling and keep-alive (``httpx.Limits``: ``max_connections``, ``keepalive_expiry``;
aiohttp has no cap on idle connections, so ``max_keepalive_connections`` is not
enforced), the ``connect``/``read``/``pool`` timeouts of the request's ``timeout``
extension (aiohttp has no write timeout: a body write waits on the read timeout's
socket), and raising httpx's errors with the meaning httpx gives them: only failures
before the request was sent are ``ConnectError``/``ConnectTimeout``.

What it must not do: retries (aiohttp's own retry of a dropped idempotent request is
switched off), time budgets, circuit breaking (that is
:mod:`djscale.services.transport`), redirects, cookies (an upstream's ``Set-Cookie``
must never ride along on another user's request), decompression (bodies pass through
as sent; ``httpx.Response`` decodes them when read), waiting for ``100 Continue`` (the
``Expect`` header is not sent: the body goes at once, as with httpx).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from djscale.errors import MissingDependency
from djscale.services.transport import DEFAULT_LIMITS

try:
    import aiohttp
    from yarl import URL
except ImportError as exc:  # aiohttp (and its yarl) come with the gateway extra
    raise MissingDependency("aiohttp", extra="gateway",
                            feature="the async service transport (AsyncServiceClient, "
                                    "the API gateway)") from exc

__all__ = ["AiohttpTransport"]

_MAX_HEADER_BYTES = 64 * 1024

# Most specific first: the first match wins. Anything else that aiohttp raises after
# the connection was made may have reached the server: never a Connect* error.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),   # connect or pool wait
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),           # sock_read
    (aiohttp.ClientConnectorError, httpx.ConnectError),        # refused, DNS, TLS
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # malformed answer
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientError, httpx.ReadError),
    (TimeoutError, httpx.ReadTimeout),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise aiohttp's errors as the httpx errors that callers catch."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        for source, target in _ERRORS:
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__) from exc
        raise  # pragma: no cover - the last rows match every error caught


class _ResponseStream(httpx.AsyncByteStream):
    """The body as aiohttp receives it; closing it frees (or drops) the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to the end, closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` async transport over aiohttp's keep-alive connection pool."""

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.limits = limits
        self.verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        keepalive: dict[str, Any] = {}
        if self.limits.keepalive_expiry is not None:
            keepalive["keepalive_timeout"] = self.limits.keepalive_expiry
        connector = aiohttp.TCPConnector(limit=self.limits.max_connections or 0,
                                         ssl=self.verify, **keepalive)
        session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False, trust_env=False,
            # aiohttp refuses answer header lines over 8 KiB; h11 (httpx) took a 16 KiB
            # head: a large Set-Cookie or CSP header from a trusted service must pass.
            max_line_size=_MAX_HEADER_BYTES, max_field_size=_MAX_HEADER_BYTES,
            # Send exactly the headers httpx built: none of aiohttp's defaults.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        # aiohttp silently sends an idempotent request a second time when the connection
        # drops; retries belong to ResilientTransport (counted, within the budget, seen
        # by the breaker). No public switch: this is the one aiohttp's own test client
        # flips; test_async_get_cut_off_is_retried pins the resulting attempt count.
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the body streams, and closing it releases the connection."""
        if self._session is None:
            self._session = self._open()
        timeouts = request.extensions.get("timeout") or {}
        # Without Expect: aiohttp would hold the body back until the server sends
        # "100 Continue", and wait for ever on one that does not; httpx sent it at once.
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() != b"expect"]
        data: bytes | AsyncIterator[bytes] | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = _chunks(request)
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        with _httpx_errors():
            response = await self._session.request(
                request.method, URL(str(request.url), encoded=True), headers=headers,
                data=data, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.get("pool"),
                                              sock_connect=timeouts.get("connect"),
                                              sock_read=timeouts.get("read")))
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(status_code=response.status, headers=list(response.raw_headers),
                              stream=_ResponseStream(response), extensions=extensions)

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _chunks(request: httpx.Request) -> AsyncIterator[bytes]:
    if not isinstance(request.stream, httpx.AsyncByteStream):
        raise TypeError("an async transport needs a request with an async body")
    async for chunk in request.stream:
        yield chunk
