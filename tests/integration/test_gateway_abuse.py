"""Protocol abuse at the gateway, with raw sockets: refused, bounded, never forwarded.

The gateway runs under uvicorn with :class:`djscale.gateway_server.GatewayHttpProtocol`
(small budgets here: a 1 s head deadline, 8 KiB heads, a 1 s body deadline) in front of
a real HTTP upstream that records every request it gets. Meanwhile a client sends
ordinary requests in a loop: each abuse must be refused with its status, reach no
upstream, hold no connection past its budget, and leave ordinary traffic answered.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from djscale.cluster.supervisor import free_port, wait_until
from djscale.gateway_server import GatewayHttpProtocol
from djscale.services.gateway import Gateway
from djscale.topology import parse
from tests.integration.test_gateway import Hit, Reply, Upstream

pytestmark = pytest.mark.integration

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEAD = 8 * 1024
HANG = 15.0
"""Seconds after which a socket read means the gateway is stuck (never reached normally)."""


class SmallBudgets(GatewayHttpProtocol):
    head_timeout = HEAD_TIMEOUT
    max_head_bytes = MAX_HEAD


def _ok(hit: Hit) -> Reply:
    return 200, {}, {"path": hit.path}


class Server:
    """The gateway under uvicorn in a thread, with the gateway's protocol."""

    def __init__(self, upstream: Upstream) -> None:
        topology = parse({"project": {"name": "abuse"},
                          "services": {"api": {"urls": [upstream.url], "timeout": 2.0}},
                          "gateway": {"routes": [{"prefix": "/api/", "service": "api"}]}})
        app = Gateway(services=topology.services, routes=topology.gateway.routes,
                      body_timeout=BODY_TIMEOUT)
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                log_level="error", http=SmallBudgets, proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10), "gateway did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Traffic:
    """Ordinary GETs in a loop on their own connection; every answer is recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    self.statuses.append(client.get("/api/ok").status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.stop.wait(0.02)

    def answered_more_than(self, count: int) -> bool:
        return wait_until(lambda: len(self.statuses) > count + 3, HANG)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(_ok)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(upstream: Upstream) -> Iterator[Server]:
    server = Server(upstream)
    yield server
    server.close()


@pytest.fixture(scope="module")
def traffic(gateway: Server) -> Iterator[Traffic]:
    running = Traffic(gateway.url)
    # Its keep-alive connection is open before any test counts the gateway's connections.
    assert wait_until(lambda: bool(running.statuses), HANG), running.errors
    yield running
    running.stop.set()
    running.thread.join(10)


@pytest.fixture(autouse=True)
def nothing_forwarded_and_traffic_flows(upstream: Upstream, gateway: Server,
                                        traffic: Traffic) -> Iterator[None]:
    """Around each test: no abusive request reached the upstream, ordinary ones were answered."""
    answered = len(traffic.statuses)
    baseline = gateway.open_connections()
    hits = len(upstream.hits)
    yield
    assert [hit.path for hit in upstream.hits[hits:] if hit.path != "/api/ok"] == []
    assert traffic.answered_more_than(answered), "ordinary traffic stopped being answered"
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.errors == []
    # Every connection of the test was closed by the gateway: none held past its budget.
    assert wait_until(lambda: gateway.open_connections() <= baseline, HANG)


def read_answer(sock: socket.socket) -> tuple[int, bytes, bool]:
    """(status, raw answer, closed by the gateway) of what the gateway sends back."""
    sock.settimeout(HANG)
    answer = b""
    closed = False
    try:
        while chunk := sock.recv(65536):
            answer += chunk
        closed = True
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer, closed


def send(gateway: Server, data: bytes) -> tuple[int, bytes, bool]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=HANG) as sock:
        sock.sendall(data)
        return read_answer(sock)


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"\r\n"


def test_ordinary_requests_are_forwarded(gateway: Server, upstream: Upstream) -> None:
    status, answer, _ = send(gateway, get(b"/api/ok", b"Connection: close"))
    assert status == 200, answer


@pytest.mark.parametrize("headers", [
    [b"X-Big: " + b"a" * (MAX_HEAD + 100)],
    [b"X-%d: %s" % (i, b"a" * 60) for i in range(MAX_HEAD // 60)],
], ids=["one-huge-header", "many-headers"])
def test_an_oversized_head_is_431_and_the_connection_closes(
        gateway: Server, headers: list[bytes]) -> None:
    status, answer, closed = send(gateway, get(b"/api/x", *headers))
    assert status == 431, answer[:200]
    assert b'"head_too_large"' in answer
    assert closed


def test_an_oversized_target_is_431(gateway: Server) -> None:
    status, answer, closed = send(gateway, get(b"/api/" + b"a" * (MAX_HEAD + 1)))
    assert (status, closed) == (431, True), answer[:200]


def test_a_slow_head_is_408_and_the_connection_closes(gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=HANG) as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: gw\r\n")
        # Slowloris: a header byte now and then, never the end of the head.
        answered = False
        for _ in range(int(HANG / 0.2)):
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                answered = True
                break
            try:
                sock.sendall(b"X")
            except OSError:
                break
        assert answered, "the gateway kept waiting for the head"
        status, answer, closed = read_answer(sock)
    assert status == 408, answer
    assert b'"head_timeout"' in answer
    assert closed


def test_many_slow_heads_do_not_hold_up_other_clients(gateway: Server,
                                                      traffic: Traffic) -> None:
    sockets = [socket.create_connection(("127.0.0.1", gateway.port), timeout=HANG)
               for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: gw\r\n")
        answered = len(traffic.statuses)
        assert traffic.answered_more_than(answered)
        results = [read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert {(status, closed) for status, _, closed in results} == {(408, True)}


def test_an_idle_new_connection_is_closed_after_the_head_deadline(gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=HANG) as sock:
        status, _, closed = read_answer(sock)
    assert (status, closed) == (408, True)


def test_content_length_with_transfer_encoding_is_400_and_closes(gateway: Server) -> None:
    status, answer, closed = send(
        gateway, b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\n"
                 b"Host: gw\r\n\r\n")
    assert (status, closed) == (400, True), answer
    assert b'"bad_request"' in answer


@pytest.mark.parametrize("target", [
    b"http://127.0.0.1:1/api/x", b"https://evil.example/api/x", b"//evil.example/api/x",
    b"evil.example:443",
])
def test_a_target_that_is_not_a_path_is_400(gateway: Server, target: bytes) -> None:
    status, answer, _ = send(gateway, get(target, b"Connection: close"))
    # //host/... is origin-form (a path) that matches no route: 404, nothing forwarded.
    assert status == (404 if target.startswith(b"//") else 400), answer


@pytest.mark.parametrize("target", [
    b"/api/../admin", b"/api/x/../../admin", b"/api/%2e%2e/admin", b"/api/%2E/x",
    b"/api/a%2F..%2Fb", b"/api/a\\..\\b", b"/api/.",
])
def test_dot_segments_are_400(gateway: Server, target: bytes) -> None:
    status, answer, _ = send(gateway, get(target, b"Connection: close"))
    assert status == 400, answer
    assert b'"bad_target"' in answer


@pytest.mark.parametrize("target", [b"/api/%FF", b"/api/%C0%AF", b"/api/%ED%A0%80",
                                    b"/api/\xff", b"/api/a%00b"])
def test_paths_that_are_not_utf8_text_are_400(gateway: Server, target: bytes) -> None:
    status, answer, _ = send(gateway, get(target, b"Connection: close"))
    assert status == 400, answer


def test_a_slow_body_is_408_and_closes(gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=HANG) as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"a\": ")
        started = time.monotonic()
        status, answer, closed = read_answer(sock)
    assert status == 408, answer
    assert b'"body_timeout"' in answer
    assert closed
    assert time.monotonic() - started < HANG
