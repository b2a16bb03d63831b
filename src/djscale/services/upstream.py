"""The gateway's wire to its upstreams: HTTP/1.1 keep-alive pools on asyncio protocols.

Why not :class:`~djscale.services.client.AsyncServiceClient` on the forwarding path: every
proxied request paid for an ``httpx.Request`` (URL parsing, header models), an aiohttp
request and response object with their timers and header multidicts, and an
``httpx.Response`` around it: profiled with py-spy under 16 concurrent requests
(``benchmarks/bench_services.py``), that client stack was ~44% of the gateway's CPU per
request (docs/services.md, "Gateway performance"). Here a request is one ``bytes`` head
written to a pooled connection, and the answer is parsed from the socket's buffer with
``bytes`` operations into a status, a list of raw header pairs and body chunks.
Compositions and Django code keep using the httpx clients; this module serves only the
gateway's proxy path.

What it owns, per upstream address (:class:`UpstreamPool`): a bounded set of
connections (``max_connections``; callers over the cap wait within their budget),
keep-alive reuse with an idle expiry, and parsing of answers (``Content-Length``,
``chunked``, or read to close; interim ``1xx`` answers skipped; heads over
``max_head_bytes`` refused). Per service (:class:`UpstreamClient`): round robin over its
URLs and the same resilience as the httpx transports, through the same bookkeeping
(:class:`djscale.services.transport._Call`): one time budget for the call, retries of
idempotent requests (and of any request whose connection could not be opened), and the
service's circuit breaker. Failures raise the httpx errors that bookkeeping understands;
callers see :class:`~djscale.errors.ServiceError` subclasses.

A pooled connection that the upstream closed while idle can fail the next request before
any byte of the answer arrives; an idempotent request is then sent once more on a new
connection (not counted as a retry or a failure: the service did nothing wrong). A
non-idempotent one is not: the upstream may have acted on it.

What it must not do: decompress, follow redirects, keep cookies, add headers of its own
(the caller writes the whole head), or serve more than one event loop (a client opens
its pools in the loop of its first request).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import ssl
import time
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote, urlsplit

import httpx

from djscale.errors import ConfigurationError
from djscale.services.breaker import CircuitBreaker
from djscale.services.policy import RetryPolicy
from djscale.services.transport import DEFAULT_LIMITS, _Call, _Resilience

__all__ = ["UpstreamClient", "UpstreamPool", "UpstreamResponse"]

_NO_BODY_STATUSES = frozenset({204, 304})
_HIGH_WATER = 256 * 1024  # body bytes queued before the upstream socket is paused


class _Stale(Exception):
    """A reused connection closed before any byte of the answer arrived."""


class UpstreamResponse:
    """An answer being received: status and raw headers at once, the body as it comes.

    Read the body with :meth:`chunk` until it returns ``b""``; then (or on any failure)
    :meth:`release` hands the connection back (or closes it if it cannot be reused).
    """

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_queued", "_waiter", "headers",
                 "keep_alive", "status")

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.headers = headers
        """Header pairs as received (names as sent; ``Transfer-Encoding`` already undone)."""
        self.keep_alive = keep_alive
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        """True when the whole body has arrived (it may still be queued here)."""
        return self._done

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def chunk(self) -> bytes:
        """The next piece of the body, ``b""`` at its end; raises httpx errors if cut off."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._queued -= len(data)
        if self._conn is not None and self._queued < _HIGH_WATER // 4:
            self._conn.resume()
        return data

    def take_body(self) -> bytes | None:
        """The whole body when it has all arrived intact (emptying the queue), else None:
        the proxy then answers in one piece instead of streaming."""
        if not self._done or self._error is not None:
            return None
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._queued = 0
        return data

    async def read(self) -> bytes:
        """The whole body (then release the connection)."""
        parts = []
        try:
            while data := await self.chunk():
                parts.append(data)
        finally:
            self.release()
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back: to the pool when reusable, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish_response(self._done and self._error is None and self.keep_alive)


class _Connection(asyncio.Protocol):
    """One upstream connection: sends a head, parses the answer into an UpstreamResponse."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self._paused = False
        self.timer: asyncio.TimerHandle | None = None
        self._head_waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._head_request = False
        self._got_bytes = False
        # Body framing of the answer being received.
        self._mode = ""          # "length" | "chunked" | "close" | "" (between answers)
        self._left = 0           # bytes left of a Content-Length body or of a chunk
        self._chunk_state = ""   # "size" | "data" | "crlf" | "trailer"

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's is not an ``asyncio.Transport`` subclass)."""
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever was waiting on this connection; forget it in the pool."""
        self.closed = True
        self.pool._forget(self)
        if self._head_waiter is not None and not self._head_waiter.done():
            if self.reused and not self._got_bytes:
                self._head_waiter.set_exception(_Stale())
            else:
                self._head_waiter.set_exception(httpx.RemoteProtocolError(
                    "the upstream closed the connection without a complete answer"))
        response = self._response
        if response is not None:
            if self._mode == "close":
                self._mode = ""
                response._finish()
            else:
                response._finish(httpx.ReadError("the upstream closed the connection in "
                                                 "the middle of its answer"))

    def data_received(self, data: bytes) -> None:
        """Parse what arrived: the head, then the body."""
        self._got_bytes = True
        self.buffer += data
        try:
            if self._response is None and self._head_waiter is not None:
                self._parse_head()
            if self._response is not None:
                self._parse_body()
            elif self.buffer and self._head_waiter is None:
                raise httpx.RemoteProtocolError("the upstream sent bytes nobody asked for")
        except httpx.HTTPError as exc:
            self._fail(exc)

    def pause(self) -> None:
        """Stop reading from the upstream (the client is slower than it)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read from the upstream again."""
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ exchange

    def send(self, head: bytes, body: bytes, *, head_request: bool
             ) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves with the answer's head."""
        assert self.transport is not None
        self._head_waiter = self.pool.loop.create_future()
        self._head_request = head_request
        self._got_bytes = False
        self.transport.write(head + body if body else head)
        return self._head_waiter

    def finish_response(self, reusable: bool) -> None:
        """The caller is done with the answer: back to the pool, or closed."""
        self._cancel_timer()
        self._response = None
        if reusable and not self.buffer and not self.closed:
            self.pool._put_back(self)
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (the pool forgets it when the close completes)."""
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(exc)
        if self._response is not None:
            self._response._finish(exc)
        self.close()

    # ------------------------------------------------------------------ parsing

    def _parse_head(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > self.pool.max_head_bytes:
                    raise httpx.RemoteProtocolError("the upstream's answer head is too large")
                return
            if end > self.pool.max_head_bytes:
                raise httpx.RemoteProtocolError("the upstream's answer head is too large")
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            lines = head.split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise httpx.RemoteProtocolError(f"the upstream's status line is not "
                                                f"HTTP/1.x: {lines[0][:60]!r}")
            status = int(code)
            if 100 <= status < 200:
                if status == 101:
                    raise httpx.RemoteProtocolError("the upstream switched protocols")
                continue  # an interim answer (100 Continue, 103 Early Hints): skip it
            break
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        chunked = False
        keep_alive = version != b"HTTP/1.0"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx.RemoteProtocolError("the upstream sent a malformed header line")
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and length != value):
                    raise httpx.RemoteProtocolError("the upstream sent a bad Content-Length")
                length = value
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    keep_alive = False  # another coding: the body ends with the connection
                continue  # undone here: the gateway's server frames the body again
            elif lower == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            headers.append((name, value))
        response = UpstreamResponse(self, status, headers, keep_alive)
        if self._head_request or status in _NO_BODY_STATUSES:
            self._mode = ""
            response._done = True
        elif chunked:
            self._mode, self._chunk_state = "chunked", "size"
            headers[:] = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        elif length is not None:
            self._mode, self._left = "length", int(length)
            if self._left == 0:
                self._mode, response._done = "", True
        else:
            self._mode, response.keep_alive = "close", False
        self._response = response
        waiter, self._head_waiter = self._head_waiter, None
        assert waiter is not None
        if not waiter.done():
            waiter.set_result(response)

    def _parse_body(self) -> None:
        response = self._response
        assert response is not None
        if self._mode == "length":
            if self.buffer:
                data = self.buffer[:self._left]
                self.buffer = self.buffer[self._left:]
                self._left -= len(data)
                response._feed(data)
                if self._left == 0:
                    self._mode = ""
                    response._finish()
        elif self._mode == "close":
            if self.buffer:
                response._feed(self.buffer)
                self.buffer = b""
        elif self._mode == "chunked":
            self._parse_chunks(response)

    def _parse_chunks(self, response: UpstreamResponse) -> None:
        while self.buffer:
            if self._chunk_state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    if len(self.buffer) > 1024:
                        raise httpx.RemoteProtocolError("the upstream sent a bad chunk size")
                    return
                size = self.buffer[:end].split(b";", 1)[0].strip()
                self.buffer = self.buffer[end + 2:]
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("the upstream sent a bad chunk size") \
                        from None
                self._chunk_state = "data" if self._left else "trailer"
            elif self._chunk_state == "data":
                data = self.buffer[:self._left]
                self.buffer = self.buffer[self._left:]
                self._left -= len(data)
                response._feed(data)
                if self._left == 0:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self.buffer) < 2:
                    return
                if self.buffer[:2] != b"\r\n":
                    raise httpx.RemoteProtocolError("the upstream sent a bad chunk end")
                self.buffer = self.buffer[2:]
                self._chunk_state = "size"
            else:  # trailer: header lines (dropped) up to an empty line
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    if len(self.buffer) > self.pool.max_head_bytes:
                        raise httpx.RemoteProtocolError("the upstream's trailer is too large")
                    return
                line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
                if not line:
                    self._mode = self._chunk_state = ""
                    response._finish()
                    return


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one ``host:port`` (TLS when ``ssl_context``)."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 100, keepalive_expiry: float = 5.0,
                 max_head_bytes: int = 64 * 1024) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.max_head_bytes = max_head_bytes
        self.loop = asyncio.get_running_loop()
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(self, head: bytes, body: bytes, *, deadline: float,
                      connect_timeout: float, idempotent: bool,
                      head_request: bool = False) -> UpstreamResponse:
        """Send one request and wait (until the loop time ``deadline``) for the answer's
        head. Raises httpx's ``ConnectError``/``ConnectTimeout``/``PoolTimeout`` when the
        request was not sent, other ``httpx.TransportError`` subclasses when it was."""
        while True:
            conn = await self._acquire(deadline, connect_timeout)
            # One deadline for the head and the body; cancelled when the answer is released.
            conn.timer = self.loop.call_at(deadline, self._time_out, conn)
            try:
                return await conn.send(head, body, head_request=head_request)
            except _Stale:
                conn._cancel_timer()
                if idempotent:
                    continue  # the upstream closed it while idle: try a fresh one
                raise httpx.RemoteProtocolError("the upstream closed a kept-alive "
                                                "connection as the request was sent") from None
            except BaseException:
                conn.close()
                raise

    def _time_out(self, conn: _Connection) -> None:
        conn.timer = None
        conn._fail(httpx.ReadTimeout("the upstream did not answer within the budget"))

    async def _acquire(self, deadline: float, connect_timeout: float) -> _Connection:
        while True:
            now = self.loop.time()
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely closed
                if conn.closed or now - conn.idle_since > self.keepalive_expiry \
                        or conn.transport is None or conn.transport.is_closing():
                    conn.close()
                    continue
                conn.reused = True
                return conn
            if len(self._open) < self.max_connections:
                return await self._connect(min(connect_timeout, deadline - now))
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to the upstream within "
                                        "the budget") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, timeout: float) -> _Connection:
        conn = _Connection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self.loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context else None)
        except TimeoutError:
            self._forget(conn)
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} took longer "
                                       f"than {timeout:.3g}s") from None
        except OSError as exc:
            self._forget(conn)
            raise httpx.ConnectError(f"{exc.strerror or exc}") from exc
        except BaseException:
            self._forget(conn)
            raise
        return conn

    def _put_back(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


class _Base:
    """One URL of a service: its pool (made on first use) and what heads need."""

    def __init__(self, url: str, limits: httpx.Limits) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"service URL {url!r} must be http:// or https:// "
                                     "with a host")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.target = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.path_prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode()
        self.authorization: bytes | None = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = b"Basic " + base64.b64encode(token.encode())
        self.limits = limits
        self.pool: UpstreamPool | None = None

    def get_pool(self) -> UpstreamPool:
        pool = self.pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            if pool is not None and not pool.loop.is_closed():
                pool.close()  # connections of a finished loop went with it
            context = ssl.create_default_context() if self.tls else None
            pool = self.pool = UpstreamPool(
                self.host, self.port, ssl_context=context,
                max_connections=self.limits.max_connections or 100,
                keepalive_expiry=self.limits.keepalive_expiry or 5.0)
        return pool


class UpstreamClient(_Resilience):
    """The gateway's client of one service: round robin over its URLs, with its budget,
    retries and breaker (see the module docstring)."""

    def __init__(self, *, name: str, urls: Sequence[str], timeout: float = 5.0,
                 connect_timeout: float = 1.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None,
                 limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        super().__init__(service=name, timeout=timeout, connect_timeout=connect_timeout,
                         retry=retry, breaker=breaker, clock=time.monotonic)
        if not urls:
            raise ConfigurationError(f"service {name!r} has no URL: give at least one")
        self.bases = [_Base(url, limits) for url in urls]
        self._next = itertools.cycle(self.bases)

    def next_base(self) -> _Base:
        """The URL the next request goes to (round robin)."""
        return next(self._next)

    async def send(self, base: _Base, method: str, path: str, head: bytes, body: bytes, *,
                   idempotent: bool, timeout: float | None = None,
                   retries: int | None = None) -> UpstreamResponse:
        """Send a request whose whole head (request line to the empty line) is ``head``,
        to ``base``, within the budget and with the retries of this service. Returns the
        answer with its body still to read; raises :class:`~djscale.errors.ServiceError`.
        """
        call = _Call(self, method=method, path=path, target=base.target,
                     idempotent=idempotent, budget=timeout, retries=retries)
        pool = base.get_pool()
        head_request = method == "HEAD"
        while True:
            with call.attempt() as remaining:
                response = await pool.request(
                    head, body, deadline=pool.loop.time() + remaining,
                    connect_timeout=self.connect_timeout, idempotent=idempotent,
                    head_request=head_request)
                delay = call.on_response(response.status)
                if delay < 0:
                    return response
                response.release()
                call.delay = delay
            await asyncio.sleep(call.delay)

    def close(self) -> None:
        """Close every pooled connection."""
        for base in self.bases:
            if base.pool is not None:
                base.pool.close()
                base.pool = None
