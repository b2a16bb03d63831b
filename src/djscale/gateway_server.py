"""The gateway's HTTP/1.1 protocol for uvicorn: limits a proxy in front of services needs.

uvicorn (httptools) reads request heads without a size limit or a deadline, and hands an
absolute-form target (``GET http://elsewhere/api/x``) to the app as if it were the path.
:class:`GatewayHttpProtocol` is uvicorn's httptools protocol with, per request:

- a head size limit (:attr:`~GatewayHttpProtocol.max_head_bytes`: target plus every
  header line): a larger head answers ``431`` and the connection closes;
- a head deadline (:attr:`~GatewayHttpProtocol.head_timeout`) from the connection's (or
  the request's) first byte until the end of its head: a slow client (slowloris) or an
  idle new connection gets ``408`` and the connection closes;
- origin-form targets only (``/path?query``; ``*`` for ``OPTIONS``): anything else
  answers ``400`` and closes.

``Content-Length`` together with ``Transfer-Encoding``, and bytes that are not allowed in a
request line, are refused by the parser (llhttp) itself: ``400`` and close. Every refusal
is a JSON error in the gateway's shape (``{"error": {"status", "code", "message"}}``). All of these
happen before the gateway app sees the request, so nothing reaches an upstream. The app
(:mod:`djscale.services.gateway`) checks the path itself (dot segments, bytes that are
not UTF-8) and bounds the time a body may take.

A graceful stop (SIGTERM) drains instead of cutting: uvicorn stops accepting, and each
keep-alive connection that is idle at that moment is kept open for
:attr:`~GatewayHttpProtocol.drain_seconds` more, so a request its client already sent is
answered (with ``Connection: close``) rather than met by a closed socket; a request in
flight is answered with ``Connection: close`` too.

Run it with :func:`main` (``python -m djscale.gateway_server --host H --port P``, as the
local cluster does), which binds the port with ``SO_REUSEPORT``: a new gateway starts on
the same port beside the running one, and the old one is stopped only once the new one
listens, so a rollout refuses no connection (:mod:`djscale.cluster.rollout`). Or with
uvicorn's command line::

    uvicorn --factory djscale.services.gateway:create_app \\
        --http djscale.gateway_server:GatewayHttpProtocol ...

Subclass it to change the limits (class attributes). This module belongs to the
``gateway`` extra (it imports uvicorn and httptools); the runtime never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatewayHttpProtocol", "bind", "main"]

_REASONS = {400: b"Bad Request", 408: b"Request Timeout",
            431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Stops the parser once the answer is sent."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head deadline and strict targets."""

    max_head_bytes = 32 * 1024
    """Largest request head (target plus header names and values), in bytes."""
    head_timeout = 10.0
    """Seconds a request head may take to arrive, from its first byte (or the connection's)."""
    drain_seconds = 1.0
    """How long an idle keep-alive connection stays open once a graceful stop began."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._draining = False
        self._drain_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ graceful stop

    def shutdown(self) -> None:
        """A graceful stop began: finish with this connection without cutting a request.

        uvicorn closes an idle keep-alive connection at once, and a request its client sent
        a moment before then meets a closed socket (a read error, or a reset, for that
        client). Here an idle connection waits :attr:`drain_seconds` for one more request,
        answered with ``Connection: close``; a request in flight is answered the same way.
        """
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            if self._drain_timer is None and not self.transport.is_closing():
                self._drain_timer = self.loop.call_later(self.drain_seconds, self._drained)
        else:
            self.cycle.keep_alive = False

    def _drained(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing() and (self.cycle is None
                                                or self.cycle.response_complete):
            self.transport.close()

    # ------------------------------------------------------------------ head deadline

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "head_timeout",
                         f"the request head did not arrive within {self.head_timeout:g}s")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the head deadline: a connection that sends nothing is closed too."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadlines with the connection."""
        self._disarm_head_timer()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        super().connection_lost(exc)

    # ------------------------------------------------------------------ refusals

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error like the gateway's, and close."""
        self._refused = True
        self._disarm_head_timer()
        body = json.dumps({"error": {"status": status, "code": code,
                                     "message": message}}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Answer a parser error (unless this protocol already answered) in JSON, and close."""
        if not self._refused:
            self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

    def data_received(self, data: bytes) -> None:
        """Feed the parser, ignoring whatever a refused client still sends."""
        if not self._refused:
            super().data_received(data)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        """A new request: its head has :attr:`head_timeout` seconds and a fresh size budget."""
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_timer()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, "head_too_large",
                         f"the request head exceeds {self.max_head_bytes} bytes")
            raise _Refused

    def on_url(self, url: bytes) -> None:
        """Collect the target, within the head size limit."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header, within the head size limit."""
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: stop its deadline, refuse targets that are not origin-form."""
        self._disarm_head_timer()
        origin_form = self.url.startswith(b"/") or (
            self.url == b"*" and self.parser.get_method() == b"OPTIONS")
        if not origin_form:
            self._refuse(400, "bad_target", "the request target must be a path "
                         "(origin-form), not an absolute URL or an authority")
            raise _Refused
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # the last answer on this connection


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, not listening yet.

    uvicorn listens on it once the application has started, so the kernel hands this
    process no connection before it can answer; until then a gateway already running on
    the port takes them all.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway of ``$DJSCALE_TOPOLOGY`` on a ``SO_REUSEPORT`` socket (one process)."""
    parser = argparse.ArgumentParser(prog="python -m djscale.gateway_server",
                                     description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="djscale.services.gateway:create_app",
                        help="an ASGI application factory (module:callable)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds a graceful stop waits for requests in flight")
    args = parser.parse_args(argv)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"gateway: cannot bind {args.host}:{args.port}: {exc.strerror}\n")
    config = uvicorn.Config(args.app, factory=True, http=GatewayHttpProtocol,
                            proxy_headers=False, access_log=False, log_level=args.log_level,
                            timeout_graceful_shutdown=int(args.graceful_timeout))
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
