"""The API gateway: an ASGI app that forwards configured routes to configured services.

Built from the topology (``[services.*]`` and ``[gateway]``; see :mod:`djscale.topology`)
and run by any ASGI server::

    uvicorn --factory --no-proxy-headers djscale.services.gateway:create_app \
        --http djscale.gateway_server:GatewayHttpProtocol

(``$DJSCALE_TOPOLOGY`` names the topology file; ``--no-proxy-headers`` because the gateway
handles ``X-Forwarded-*`` itself and uvicorn's rewriting would hide the real peer.)

What it guarantees:

- **Only configured routes, only configured hosts.** A path that matches no route prefix
  (or no aggregated endpoint) gets a JSON 404 and causes no upstream call. The upstream
  URL is always the configured base URL plus the request's path: the scheme, host and
  port never come from the request.
- **Proxy headers.** Hop-by-hop headers (``Connection`` and the headers it names,
  ``Keep-Alive``, ``Transfer-Encoding``, ``Upgrade``...) are dropped both ways;
  ``X-Forwarded-For/Proto/Host`` are set (an incoming chain is kept only from a trusted
  proxy); ``X-Request-ID`` is kept when well formed, made otherwise, and returned.
- **Resilience per route.** Each service has an
  :class:`~djscale.services.client.AsyncServiceClient` (pooled connections, time budget,
  retries of idempotent requests, circuit breaker); a route may override the budget and
  the retries.
- **Rate limit per client** (``gateway.rate_limit`` requests per ``rate_window``) in
  Redis, shared by every gateway process, with tokens leased in batches so that most
  requests need no Redis round trip (:mod:`djscale.services.leased_ratelimit`: never more
  than the limit in any window).
- **Bad targets stop here.** A path with ``.`` or ``..`` segments (also percent-encoded),
  a NUL byte, bytes that are not UTF-8, or a target that is not a path (absolute-form)
  answers 400 before any rate limit, route or upstream is involved.
- **A budget for slow bodies**: a body that has not fully arrived after ``body_timeout``
  seconds answers 408 (and the connection closes). Head size and head deadline are the
  HTTP server's: :mod:`djscale.gateway_server` (431, 408) for uvicorn.
- **JSON errors**: 400 bad target, 404 no route, 408 body too slow, 413 body too large,
  429 rate limited, 502 upstream unreachable, 503 circuit open (with ``Retry-After``),
  504 upstream too slow.
- **Aggregated endpoints** (``[[gateway.compositions]]``): a GET on the composition's path
  calls every part concurrently (``asyncio.gather``) and answers
  ``{"data": {part: body}, "errors": {part: error}}``; a failed optional part is ``null``
  with its error listed, a failed required part fails the answer.

The gateway holds no state besides connection pools, breakers and the Redis client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from djscale.errors import CircuitOpen, ServiceError, ServiceTimeout
from djscale.services.breaker import BreakerRegistry
from djscale.services.client import AsyncServiceClient, _transport_args
from djscale.services.leased_ratelimit import LeasedRateLimiter
from djscale.services.policy import IDEMPOTENCY_KEY, IDEMPOTENT_METHODS
from djscale.services.ratelimit import RateLimiter
from djscale.services.upstream import UpstreamClient, UpstreamResponse
from djscale.topology import CompositionSpec, RouteSpec, ServiceSpec, Topology

__all__ = ["HOP_BY_HOP", "Gateway", "create_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
"""Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1)."""

# Set again by the gateway (or by httpx / the ASGI server) for the next hop.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "x-request-id", "x-forwarded-for",
                              "x-forwarded-proto", "x-forwarded-host", "forwarded"}
_RESPONSE_DROP = HOP_BY_HOP | {"server", "date", "x-request-id"}
_REQUEST_DROP_B = frozenset(h.encode() for h in _REQUEST_DROP)
_RESPONSE_DROP_B = frozenset(h.encode() for h in _RESPONSE_DROP)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_IDEMPOTENCY_KEY_B = IDEMPOTENCY_KEY.lower().encode()
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}$")


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


def _bad_target(scope: Scope) -> str | None:
    """Why the request target may not be forwarded (None when it may)."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    raw = raw.split(b"?", 1)[0]
    if not raw.startswith(b"/"):
        return "the request target must be a path (origin-form)"
    if raw.isascii() and b"%" not in raw and b"/." not in raw and b"\\" not in raw \
            and b"\x00" not in raw:
        return None  # the common case: nothing to decode, no dot segment possible
    decoded = urllib.parse.unquote_to_bytes(raw)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "the path is not valid UTF-8"
    if "\x00" in text:
        return "the path contains a NUL byte"
    # Segments as the upstream will see them: %2e%2e and %2F..%2F are dot segments too.
    if any(segment in (".", "..") for segment in text.replace("\\", "/").split("/")):
        return "the path contains '.' or '..' segments"
    return None


@dataclass(frozen=True)
class _Route:
    prefix: str
    service: str
    strip_prefix: bool
    timeout: float | None
    retries: int | None
    write_timeout: float | None = None

    def timeout_for(self, method: str) -> float | None:
        """``write_timeout`` for a request that may write, else ``timeout``."""
        if self.write_timeout is not None and method not in _READ_METHODS:
            return self.write_timeout
        return self.timeout

    def matches(self, path: str) -> bool:
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix) or path == self.prefix.rstrip("/")
        return path == self.prefix or path.startswith(self.prefix + "/")


class _Composition:
    def __init__(self, spec: CompositionSpec) -> None:
        self.spec = spec
        pattern = "".join(
            f"(?P<{piece[1:-1]}>[^/]+)" if piece.startswith("{") else re.escape(piece)
            for piece in re.split(r"({[A-Za-z_][A-Za-z0-9_]*})", spec.path) if piece)
        self.regex = re.compile(f"^{pattern}$")

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.match(path)
        return found.groupdict() if found else None


def _header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class _Head:
    """What the gateway needs of a request's headers, read in one pass.

    ASGI servers give header names in lower case. The headers the gateway sets itself
    for the next hop (and hop-by-hop ones) are left out of :meth:`lines`.
    """

    __slots__ = ("accept_encoding", "connection", "forwarded_for", "forwarded_host",
                 "forwarded_proto", "headers", "host", "idempotency_key", "request_id")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.request_id = self.forwarded_for = self.forwarded_proto = None
        self.forwarded_host = self.host = self.connection = None
        self.accept_encoding = self.idempotency_key = False
        for name, value in headers:
            if name in _REQUEST_DROP_B:
                if name == b"host":
                    self.host = value.decode("latin-1")
                elif name == b"x-request-id":
                    self.request_id = value.decode("latin-1")
                elif name == b"x-forwarded-for":
                    self.forwarded_for = value.decode("latin-1")
                elif name == b"x-forwarded-proto":
                    self.forwarded_proto = value.decode("latin-1")
                elif name == b"x-forwarded-host":
                    self.forwarded_host = value.decode("latin-1")
                elif name == b"connection":
                    self.connection = value
            elif name == b"accept-encoding":
                self.accept_encoding = True
            elif name == _IDEMPOTENCY_KEY_B and value:
                self.idempotency_key = True

    request_id: str | None
    forwarded_for: str | None
    forwarded_proto: str | None
    forwarded_host: str | None
    host: str | None
    connection: bytes | None
    accept_encoding: bool
    idempotency_key: bool

    def lines(self, *, drop_authorization: bool = False) -> list[bytes]:
        """The end-to-end headers as ``name: value\\r\\n`` lines for the next hop."""
        drop: frozenset[bytes] | set[bytes] = _REQUEST_DROP_B
        if self.connection is not None:
            drop = drop | {t.strip().lower() for t in self.connection.split(b",")}
        if drop_authorization:
            drop = drop | {b"authorization"}
        return [b"%s: %s\r\n" % (name, value) for name, value in self.headers
                if name not in drop]


class Gateway:
    """The ASGI gateway; see the module docstring. Build it with :meth:`from_topology`."""

    def __init__(self, *, services: Sequence[ServiceSpec], routes: Sequence[RouteSpec] = (),
                 compositions: Sequence[CompositionSpec] = (),
                 limiter: RateLimiter | None = None, trusted_proxies: Iterable[str] = (),
                 max_body_bytes: int = 1024 * 1024, body_timeout: float = 30.0,
                 registry: BreakerRegistry | None = None) -> None:
        self.services = {s.name: s for s in services}
        used = [r.service for r in routes] + [p[1] for c in compositions for p in c.parts]
        for name in used:
            if name not in self.services:
                raise ValueError(f"gateway route uses unknown service {name!r}")
        # Longest prefix first, so "/api/users/admin/" wins over "/api/users/".
        self.routes = sorted(
            (_Route(r.prefix, r.service, r.strip_prefix, r.timeout, r.retries, r.write_timeout)
             for r in routes),
            key=lambda r: len(r.prefix), reverse=True)
        self.compositions = [_Composition(c) for c in compositions]
        self.limiter = limiter
        self.trusted_proxies = frozenset(trusted_proxies)
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.registry = registry or BreakerRegistry()
        self._clients: dict[str, AsyncServiceClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The proxy path's wire (djscale.services.upstream); compositions use the httpx
        # clients above. Both share the registry's breaker of a service.
        self.upstreams = {s.name: UpstreamClient(name=s.name, urls=s.urls,
                                                 **_transport_args(s, self.registry))
                          for s in services}

    @classmethod
    def from_topology(cls, topology: Topology, *, redis_url: str | None = None,
                      registry: BreakerRegistry | None = None) -> Gateway:
        """A gateway for ``topology``'s ``[gateway]``; ``redis_url`` backs the rate limit."""
        spec = topology.gateway
        limiter = None
        if spec.rate_limit:
            if not redis_url:
                raise ValueError("gateway.rate_limit needs a Redis URL (redis_url=...)")
            limiter = LeasedRateLimiter.from_url(redis_url, limit=spec.rate_limit,
                                           window=spec.rate_window,
                                           prefix=f"{topology.project.name}:gw:rl:")
        return cls(services=topology.services, routes=spec.routes,
                   compositions=spec.compositions, limiter=limiter,
                   trusted_proxies=(topology.lb.host,), max_body_bytes=spec.max_body_bytes,
                   registry=registry)

    # ------------------------------------------------------------------ clients

    def client(self, service: str) -> AsyncServiceClient:
        """The pooled client of ``service`` (created on first use in this event loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Pooled connections belong to the loop that opened them.
            self._clients, self._loop = {}, loop
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self._new_client(self.services[service])
        return client

    def _new_client(self, spec: ServiceSpec) -> AsyncServiceClient:
        # Hop-level headers are set per request; callers' auth is forwarded as sent.
        return AsyncServiceClient.from_spec(spec, registry=self.registry, forward_auth=False)

    async def aclose(self) -> None:
        """Close every pool and the limiter's Redis client."""
        for upstream in self.upstreams.values():
            upstream.close()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http`` and ``lifespan``; websockets are refused)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = _Head(scope["headers"])
        incoming_id = head.request_id
        request_id = incoming_id if incoming_id and _REQUEST_ID_RE.match(incoming_id) \
            else os.urandom(16).hex()
        peer = (scope.get("client") or ("unknown", 0))[0]
        reply = _Replier(send, request_id)
        service = ""
        try:
            problem = _bad_target(scope)
            if problem is not None:
                await reply.error(400, "bad_target", problem)
                return
            if self.limiter is not None:
                decision = await self.limiter.hit(self._client_id(peer, head.forwarded_for))
                if not decision.allowed:
                    await reply.error(429, "rate_limited", "too many requests from this "
                                      "client; slow down", headers=[(
                                          b"retry-after",
                                          str(max(1, math.ceil(decision.retry_after))).encode())])
                    return
            path: str = scope["path"]
            method: str = scope["method"]
            if path.startswith("//"):
                await reply.error(404, "no_route", f"no route for {path!r}")
                return
            if method in ("GET", "HEAD"):
                for comp in self.compositions:
                    params = comp.match(path)
                    if params is not None:
                        await self._compose(comp, params, scope, scope["headers"], peer,
                                            reply)
                        return
            for route in self.routes:
                if route.matches(path):
                    break
            else:
                await reply.error(404, "no_route",
                                  f"no route for {path!r}: the gateway forwards only "
                                  "configured path prefixes")
                return
            service = route.service
            body = await self._read_body(receive)
            await self._forward(route, scope, head, peer, body, reply)
        except _BodyTooSlow:
            await reply.error(408, "body_timeout", "the request body did not arrive within "
                              f"{self.body_timeout:g}s", headers=[(b"connection", b"close")])
        except _BodyTooLarge:
            await reply.error(413, "body_too_large",
                              f"request body exceeds {self.max_body_bytes} bytes")
        except _Disconnected:
            return
        except ServiceError as exc:
            await reply.service_error(exc, service)
        except Exception:  # the client gets JSON, the log gets the traceback
            log.exception("gateway failed on %s %s", scope.get("method"), scope.get("path"))
            await reply.error(500, "gateway_error", "the gateway failed on this request; "
                              "see its log for request id " + request_id)

    # ------------------------------------------------------------------ pieces

    def _client_id(self, peer: str, chain: str | None) -> str:
        """The client's address: the peer, or the last untrusted hop of a trusted chain
        (``chain``: the request's ``X-Forwarded-For``)."""
        if peer not in self.trusted_proxies:
            return peer
        hops = [h.strip() for h in chain.split(",") if h.strip()] if chain else []
        for hop in reversed(hops):
            if hop not in self.trusted_proxies:
                return hop
        return hops[0] if hops else peer

    def _upstream_headers(self, scope: Scope, headers: Sequence[tuple[bytes, bytes]],
                          peer: str, request_id: str) -> list[tuple[str, str]]:
        trusted = peer in self.trusted_proxies
        connection = _header_value(headers, b"connection") or ""
        named = {t.strip().lower() for t in connection.split(",") if t.strip()}
        out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
               if k.lower().decode("latin-1") not in _REQUEST_DROP
               and k.lower().decode("latin-1") not in named]
        chain = _header_value(headers, b"x-forwarded-for") if trusted else None
        proto = _header_value(headers, b"x-forwarded-proto") if trusted else None
        fhost = _header_value(headers, b"x-forwarded-host") if trusted else None
        host = _header_value(headers, b"host") or ""
        out += [
            ("X-Forwarded-For", f"{chain}, {peer}" if chain else peer),
            ("X-Forwarded-Proto", proto or scope.get("scheme", "http")),
            ("X-Request-ID", request_id),
        ]
        if fhost or host:
            out.append(("X-Forwarded-Host", fhost or host))
        if _header_value(headers, b"accept-encoding") is None:
            # Otherwise the HTTP client's default (gzip, deflate) would ask the service
            # for a coding this client never accepted, and the gateway passes bodies on
            # untouched.
            out.append(("Accept-Encoding", "identity"))
        return out

    async def _read_body(self, receive: Receive) -> bytes:
        try:
            async with asyncio.timeout(self.body_timeout):
                return await self._receive_body(receive)
        except TimeoutError:
            raise _BodyTooSlow from None

    async def _receive_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, route: _Route, scope: Scope, head: _Head, peer: str,
                       body: bytes, reply: _Replier) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        if route.strip_prefix:
            raw_path = b"/" + raw_path[len(route.prefix):].lstrip(b"/")
        query: bytes = scope.get("query_string", b"")
        upstream = self.upstreams[route.service]
        base = upstream.next_base()
        method: str = scope["method"]
        method_b = method.encode()
        trusted = peer in self.trusted_proxies
        chain = head.forwarded_for if trusted else None
        proto = (head.forwarded_proto if trusted else None) or scope.get("scheme", "http")
        fhost = (head.forwarded_host if trusted else None) or head.host
        lines = [method_b, b" ", base.path_prefix.encode(), raw_path,
                 b"?" + query if query else b"", b" HTTP/1.1\r\nhost: ", base.host_header,
                 b"\r\nx-forwarded-for: ",
                 f"{chain}, {peer}".encode("latin-1") if chain else peer.encode("latin-1"),
                 b"\r\nx-forwarded-proto: ", proto.encode("latin-1"),
                 b"\r\nx-request-id: ", reply.request_id.encode(), b"\r\n"]
        if fhost:
            lines += (b"x-forwarded-host: ", fhost.encode("latin-1"), b"\r\n")
        if not head.accept_encoding:
            # The client accepts no coding: the service must not pick one (the gateway
            # passes bodies on untouched).
            lines.append(b"accept-encoding: identity\r\n")
        if base.authorization is not None:
            lines += (b"authorization: ", base.authorization, b"\r\n")
            lines += head.lines(drop_authorization=True)
        else:
            lines += head.lines()
        if body or method_b in _BODY_METHODS:
            lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        lines.append(b"\r\n")
        idempotent = method in IDEMPOTENT_METHODS or head.idempotency_key
        response = await upstream.send(base, method, scope["path"], b"".join(lines), body,
                                       idempotent=idempotent,
                                       timeout=route.timeout_for(method),
                                       retries=route.retries)
        try:
            await self._answer(response, route.service, reply)
        finally:
            response.release()

    async def _answer(self, response: UpstreamResponse, service: str,
                      reply: _Replier) -> None:
        named: frozenset[bytes] | set[bytes] = _RESPONSE_DROP_B
        for name, value in response.headers:
            if name.lower() == b"connection":
                named = _RESPONSE_DROP_B | {t.strip().lower() for t in value.split(b",")}
        headers = [(k, v) for k, v in response.headers if k.lower() not in named]
        headers.append((b"x-request-id", reply.request_id.encode()))
        send = reply.send
        reply.started = True
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        whole = response.take_body()
        if whole is not None:  # the common case: the answer is all here, send it at once
            await send({"type": "http.response.body", "body": whole})
            return
        try:
            while chunk := await response.chunk():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # The status is already sent: all we can do is cut the body short.
            log.warning("upstream %s broke off its answer: %s", service, exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _compose(self, comp: _Composition, params: Mapping[str, str], scope: Scope,
                       headers: Sequence[tuple[bytes, bytes]], peer: str,
                       reply: _Replier) -> None:
        quoted = {k: urllib.parse.quote(v, safe="") for k, v in params.items()}
        fwd = dict(self._upstream_headers(scope, headers, peer, reply.request_id))

        async def call(service: str, template: str) -> httpx.Response:
            client = self.client(service)
            return await client.send(client.build("GET", template.format_map(quoted),
                                                  headers=fwd, timeout=comp.spec.timeout))

        results = await asyncio.gather(
            *(call(service, template) for _, service, template in comp.spec.parts),
            return_exceptions=True)
        data: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        failed: tuple[str, int, dict[str, Any]] | None = None
        for (key, service, _), result in zip(comp.spec.parts, results, strict=True):
            if isinstance(result, ServiceError):
                status, error = _service_error(result, service)
            elif isinstance(result, BaseException):
                raise result
            elif result.is_success:
                data[key] = _json_or_text(result)
                continue
            else:
                # A 4xx says something about the request (404: no such user): pass it
                # on; a 5xx is the upstream's failure: a bad gateway for the client.
                status = result.status_code if result.status_code < 500 else 502
                error = {"status": status, "code": "upstream_error", "service": service,
                         "message": f"service {service!r} answered {result.status_code}",
                         "upstream_status": result.status_code, "body": _json_or_text(result)}
            data[key] = None
            errors[key] = error
            if key not in comp.spec.optional and failed is None:
                failed = (key, status, error)
        if failed is not None:
            key, status, error = failed
            await reply.json(status, {"error": {**error, "part": key,
                                                "request_id": reply.request_id}})
            return
        await reply.json(200, {"data": data, "errors": errors})


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _service_error(exc: ServiceError, service: str) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, CircuitOpen):
        status, code = 503, "circuit_open"
    elif isinstance(exc, ServiceTimeout):
        status, code = 504, "upstream_timeout"
    else:
        status, code = 502, "upstream_unavailable"
    return status, {"status": status, "code": code, "service": exc.service or service,
                    "message": str(exc)}


class _Replier:
    """Sends the answer of one request, always with its ``X-Request-ID``."""

    def __init__(self, send: Send, request_id: str) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [*headers, (b"x-request-id", self.request_id.encode())]})

    async def body(self, chunk: bytes, *, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def json(self, status: int, payload: Any,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        if self.started:
            return
        body = json.dumps(payload).encode()
        await self.start(status, [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()), *headers])
        await self.body(body, more=False)

    async def error(self, status: int, code: str, message: str, *, service: str = "",
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        error: dict[str, Any] = {"status": status, "code": code, "message": message,
                                 "request_id": self.request_id}
        if service:
            error["service"] = service
        await self.json(status, {"error": error}, headers)

    async def service_error(self, exc: ServiceError, service: str) -> None:
        status, error = _service_error(exc, service)
        headers: list[tuple[bytes, bytes]] = []
        if isinstance(exc, CircuitOpen):
            headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()))
        await self.json(status, {"error": {**error, "request_id": self.request_id}}, headers)


def create_app() -> Gateway:
    """ASGI factory: the gateway of ``$DJSCALE_TOPOLOGY`` (``uvicorn --factory``).

    The rate limiter's Redis is ``$DJSCALE_GATEWAY_REDIS_URL``, else the topology's Redis
    (every node of a Redis Cluster, comma-separated) as resolved by
    :func:`djscale.settings.from_topology` (state of the local cluster).
    """
    from djscale.settings import redis_urls, resolve_topology

    topology = resolve_topology(None)
    redis_url = os.environ.get("DJSCALE_GATEWAY_REDIS_URL")
    if topology.gateway.rate_limit and not redis_url:
        # Every node of a Redis Cluster, so the limiter starts as a cluster client.
        redis_url = ",".join(redis_urls(topology))
    return Gateway.from_topology(topology, redis_url=redis_url)
