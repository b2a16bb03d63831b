"""The ASGI gateway under uvicorn, in front of real HTTP upstreams and a real Redis.

Upstreams are small threaded HTTP servers on free ports that record every request they
receive, so a test can prove what reached them (and that nothing reached a host that is
not configured).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import uvicorn

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import free_port, wait_until
from djscale.services.gateway import Gateway
from djscale.topology import Topology, parse

pytestmark = pytest.mark.integration

Reply = tuple[int, dict[str, str], Any]


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    start: float
    end: float = 0.0
    peer_port: int = 0


@dataclass
class Upstream:
    """A threaded HTTP server answering with ``handler(hit) -> (status, headers, body)``."""

    handler: Callable[[Hit], Reply]
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                hit = Hit(self.command, self.path, dict(self.headers.items()),
                          self.rfile.read(length), time.monotonic(),
                          peer_port=self.client_address[1])
                upstream.hits.append(hit)
                status, headers, body = upstream.handler(hit)
                hit.end = time.monotonic()
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the gateway gave up on us (timeout): fine

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GatewayServer:
    """A gateway served by a real uvicorn in a thread on a free port."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                log_level="warning", server_header=False,
                                proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10), "gateway did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _users(hit: Hit) -> Reply:
    user_id = hit.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if user_id == "missing":
        return 404, {}, {"detail": "no such user"}
    time.sleep(0.2 if "slowly" in hit.path else 0)
    return 200, {"Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
                 "X-Upstream": "users"}, {
        "id": user_id, "path": hit.path, "method": hit.method,
        "headers": {k.lower(): v for k, v in hit.headers.items()},
        "body": hit.body.decode()}


def _orders(hit: Hit) -> Reply:
    time.sleep(0.2 if "slowly" in hit.path else 0)
    if "user=broken" in hit.path:
        return 500, {}, {"detail": "boom"}
    return 200, {}, {"orders": [1, 2], "path": hit.path}


def _slow(hit: Hit) -> Reply:
    time.sleep(3)
    return 200, {}, {}


def _unavailable(hit: Hit) -> Reply:
    return 503, {}, {"detail": "overloaded"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    servers = {name: Upstream(handler) for name, handler in (
        ("users", _users), ("orders", _orders), ("slow", _slow), ("flaky", _unavailable),
        ("evil", _users))}
    yield servers
    for server in servers.values():
        server.close()


def _topology(upstreams: dict[str, Upstream], **gateway: Any) -> Topology:
    closed_port = free_port()  # nothing listens here
    return parse({
        "project": {"name": "gwtest"},
        "services": {
            "users": {"urls": [upstreams["users"].url + "/v1"], "timeout": 2.0},
            "orders": {"urls": [upstreams["orders"].url], "timeout": 2.0},
            "slow": {"urls": [upstreams["slow"].url], "timeout": 5.0, "retries": 2},
            "flaky": {"urls": [upstreams["flaky"].url], "retries": 2,
                      "breaker_minimum_calls": 100},
            "sluggish": {"urls": [upstreams["slow"].url], "timeout": 0.3, "retries": 0,
                         "breaker_minimum_calls": 2, "breaker_failure_rate": 1.0,
                         "breaker_reset": 30.0},
            "down": {"urls": [f"http://127.0.0.1:{closed_port}"], "retries": 1,
                     "breaker_minimum_calls": 3, "breaker_failure_rate": 1.0,
                     "breaker_reset": 30.0},
        },
        "gateway": {
            "routes": [
                {"prefix": "/api/users/", "service": "users"},
                {"prefix": "/api/orders", "service": "orders", "strip_prefix": True},
                {"prefix": "/api/slow/", "service": "slow", "timeout": 0.5,
                 "write_timeout": 6.0},
                {"prefix": "/api/flaky/", "service": "flaky"},
                {"prefix": "/api/down/", "service": "down"},
                {"prefix": "/api/sluggish/", "service": "sluggish"},
            ],
            "compositions": [
                {"path": "/api/profile/{user_id}", "optional": ["orders"],
                 "parts": {"user": "users:/api/users/{user_id}",
                           "orders": "orders:/orders/?user={user_id}&limit=5"}},
            ],
            **gateway,
        },
    })


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, Upstream]) -> Iterator[GatewayServer]:
    server = GatewayServer(Gateway.from_topology(_topology(upstreams)))
    yield server
    server.close()


@pytest.fixture()
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


# ------------------------------------------------------------------ routing and headers


def test_configured_prefix_is_forwarded_to_its_service_with_proxy_headers(
        http: httpx.Client) -> None:
    r = http.get("/api/users/7?fields=name", headers={
        "Authorization": "Token t-1", "X-Secret": "s", "Connection": "X-Secret",
        "X-Forwarded-For": "6.6.6.6", "Host": "shop.example"})
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/v1/api/users/7?fields=name"
    headers = seen["headers"]
    assert headers["authorization"] == "Token t-1"         # end-to-end: forwarded
    assert "x-secret" not in headers                       # named by Connection: dropped
    assert headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"  # peer 127.0.0.1 is trusted
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example"
    assert headers["host"] == f"127.0.0.1:{r.json()['headers']['host'].split(':')[1]}"
    assert headers["x-request-id"] == r.headers["x-request-id"]
    assert len(r.headers["x-request-id"]) == 32


def test_hop_by_hop_headers_of_the_answer_are_dropped(http: httpx.Client) -> None:
    r = http.get("/api/users/7")
    assert r.headers["x-upstream"] == "users"
    assert "x-hop" not in r.headers
    assert "keep-alive" not in r.headers


def test_a_well_formed_incoming_request_id_is_kept_and_a_bad_one_replaced(
        http: httpx.Client) -> None:
    r = http.get("/api/users/7", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["headers"]["x-request-id"] == "abc-123"
    r = http.get("/api/users/7", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_strip_prefix_forwards_the_rest_of_the_path(http: httpx.Client) -> None:
    r = http.get("/api/orders/42")
    assert r.json()["path"] == "/42"


def test_post_body_and_status_pass_through(http: httpx.Client) -> None:
    r = http.post("/api/users/9", json={"name": "ada"})
    assert r.status_code == 200
    assert (r.json()["method"], json.loads(r.json()["body"])) == ("POST", {"name": "ada"})
    assert http.get("/api/users/missing").status_code == 404


def _raw_get(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side URL normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# Dot segments answer 400 (test_gateway_abuse.py).
@pytest.mark.parametrize("path", ["/", "/admin", "/api/user/7", "/api/usersX/1",
                                  "//127.0.0.1/api/users/1"])
def test_a_path_matching_no_route_is_404_json_and_calls_no_upstream(
        gateway: GatewayServer, upstreams: dict[str, Upstream], path: str) -> None:
    before = {name: len(u.hits) for name, u in upstreams.items()}
    status, body = _raw_get(gateway.port, path)
    assert status == 404
    assert json.loads(body)["error"]["code"] == "no_route"
    assert {name: len(u.hits) for name, u in upstreams.items()} == before


def test_an_absolute_url_in_the_request_line_never_reaches_that_host(
        gateway: GatewayServer, upstreams: dict[str, Upstream]) -> None:
    evil = upstreams["evil"]
    for target in (f"{evil.url}/api/users/1", f"{evil.url}/"):
        status, _ = _raw_get(gateway.port, target, host=f"127.0.0.1:{evil.port}")
        assert status in (200, 404)
    assert evil.hits == []


# ------------------------------------------------------------------ failures


def test_a_slow_service_gives_504_at_the_route_timeout(
        http: httpx.Client, upstreams: dict[str, Upstream]) -> None:
    started = time.monotonic()
    r = http.get("/api/slow/x")
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert r.json()["error"]["service"] == "slow"
    # The route's budget is 0.5 s (the service's 5 s and its 2 retries do not stack up).
    assert 0.45 <= elapsed < 1.5, elapsed


def test_a_write_gets_the_route_write_timeout(
        http: httpx.Client, upstreams: dict[str, Upstream]) -> None:
    # A write may wait for replicas or an edge purge before answering: its route gives it
    # 6 s where a read gets 0.5 s (a GET of the same path is a 504), so the upstream's
    # 3 s answer arrives instead of a 504 after a commit. It is not retried: the upstream
    # sees it once.
    hits = len(upstreams["slow"].hits)
    r = http.post("/api/slow/x", json={}, timeout=10)
    assert r.status_code == 200, r.text
    assert len(upstreams["slow"].hits) == hits + 1


def test_idempotent_requests_are_retried_and_posts_are_not(
        http: httpx.Client, upstreams: dict[str, Upstream]) -> None:
    flaky = upstreams["flaky"]
    flaky.hits.clear()
    assert http.get("/api/flaky/a").status_code == 503
    assert len(flaky.hits) == 3                 # 1 + 2 retries
    flaky.hits.clear()
    assert http.post("/api/flaky/a", json={}).status_code == 503
    assert len(flaky.hits) == 1
    flaky.hits.clear()
    r = http.post("/api/flaky/a", json={}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 503
    assert len(flaky.hits) == 3


def test_unreachable_service_gives_502_then_503_quickly_once_its_breaker_opens(
        http: httpx.Client) -> None:
    first = http.get("/api/down/x")
    assert first.status_code == 502
    assert first.json()["error"]["code"] == "upstream_unavailable"
    # Two more failures (with their retries) open the breaker (minimum_calls = 3).
    codes = [http.get("/api/down/x").status_code for _ in range(3)]
    assert codes[-1] == 503
    started = time.monotonic()
    r = http.get("/api/down/x")
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "circuit_open"
    assert 1 <= int(r.headers["retry-after"]) <= 30
    assert elapsed < 0.5, elapsed               # refused at once: no connect, no retry


def test_a_slow_service_answers_503_at_once_while_its_breaker_is_open(
        http: httpx.Client, upstreams: dict[str, Upstream]) -> None:
    assert [http.get("/api/sluggish/x").status_code for _ in range(2)] == [504, 504]
    hits = len(upstreams["slow"].hits)
    started = time.monotonic()
    r = http.get("/api/sluggish/x")
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.json()["error"] == {
        "status": 503, "code": "circuit_open", "service": "sluggish",
        "message": r.json()["error"]["message"], "request_id": r.headers["x-request-id"]}
    assert "circuit breaker of service 'sluggish' is open" in r.json()["error"]["message"]
    assert len(upstreams["slow"].hits) == hits  # the upstream was not called
    assert elapsed < 0.3, elapsed               # well under the 0.3 s budget a call would take


def test_body_over_the_limit_is_413(upstreams: dict[str, Upstream]) -> None:
    server = GatewayServer(Gateway.from_topology(_topology(upstreams, max_body_bytes=10)))
    try:
        r = httpx.post(f"{server.url}/api/users/1", content=b"x" * 11)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"
    finally:
        server.close()


# ------------------------------------------------------------------ aggregation


def test_aggregated_endpoint_calls_both_services_concurrently(
        http: httpx.Client, upstreams: dict[str, Upstream]) -> None:
    r = http.get("/api/profile/slowly", headers={"Authorization": "Token t-2"})
    assert r.status_code == 200
    body = r.json()
    assert body["errors"] == {}
    assert body["data"]["user"]["id"] == "slowly"
    assert body["data"]["user"]["headers"]["authorization"] == "Token t-2"
    assert body["data"]["orders"]["orders"] == [1, 2]
    assert body["data"]["orders"]["path"] == "/orders/?user=slowly&limit=5"
    user_hit = upstreams["users"].hits[-1]
    order_hit = upstreams["orders"].hits[-1]
    # Each part takes 0.2 s; they overlap in time, so they ran concurrently.
    assert user_hit.start < order_hit.end and order_hit.start < user_hit.end


def test_a_failed_optional_part_is_null_with_its_error(http: httpx.Client) -> None:
    r = http.get("/api/profile/broken")
    assert r.status_code == 200
    assert r.json()["data"]["orders"] is None
    assert r.json()["errors"]["orders"]["upstream_status"] == 500


def test_a_failed_required_part_fails_the_answer_with_its_status(http: httpx.Client) -> None:
    r = http.get("/api/profile/missing")
    assert r.status_code == 404
    assert r.json()["error"]["part"] == "user"


# ------------------------------------------------------------------ rate limit (Redis)


def test_rate_limit_is_per_client_and_shared_by_gateway_processes(
        upstreams: dict[str, Upstream], djscale_cluster: LocalCluster) -> None:
    host, port = djscale_cluster.address("redis")
    redis_url = f"redis://{host}:{port}/0"
    topo = _topology(upstreams, rate_limit=3, rate_window=30.0)
    one = GatewayServer(Gateway.from_topology(topo, redis_url=redis_url))
    two = GatewayServer(Gateway.from_topology(topo, redis_url=redis_url))
    client_a = {"X-Forwarded-For": f"10.0.0.{time.time_ns() % 250}"}
    client_b = {"X-Forwarded-For": f"10.1.0.{time.time_ns() % 250}"}
    try:
        codes = [httpx.get(f"{gw.url}/api/users/1", headers=client_a).status_code
                 for gw in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
        limited = httpx.get(f"{one.url}/api/users/1", headers=client_a)
        assert limited.json()["error"]["code"] == "rate_limited"
        # A token frees up when its bucket leaves the 21 buckets the lease script sums:
        # at most 21/20 of the 30 s window (djscale.services.leased_ratelimit).
        assert 1 <= int(limited.headers["retry-after"]) <= 32
        assert httpx.get(f"{two.url}/api/users/1", headers=client_b).status_code == 200
    finally:
        one.close()
        two.close()


def test_rate_limiter_fails_open_when_redis_is_unreachable(
        upstreams: dict[str, Upstream]) -> None:
    topo = _topology(upstreams, rate_limit=1)
    server = GatewayServer(Gateway.from_topology(
        topo, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        codes = [httpx.get(f"{server.url}/api/users/1").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
    finally:
        server.close()


def test_one_gateway_object_serves_successive_event_loops(upstreams: dict[str, Upstream]) -> None:
    import asyncio

    app = Gateway.from_topology(_topology(upstreams))

    async def call() -> int:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return (await client.get("/api/users/1")).status_code

    assert [asyncio.run(call()) for _ in range(2)] == [200, 200]


# ------------------------------------------------------------------ the upstream wire


def _session(hit: Hit) -> Reply:
    if hit.path.startswith("/api/login"):
        return 200, {"Set-Cookie": "sessionid=alice-secret; Path=/"}, {"user": "alice"}
    if hit.path.startswith("/api/moved"):
        return 302, {"Location": "/api/elsewhere"}, {}
    if hit.path.startswith("/api/gzip"):
        import gzip

        return 200, {"Content-Encoding": "gzip"}, gzip.compress(b'{"packed": true}')
    headers = {k.lower(): v for k, v in hit.headers.items()}
    return 200, {}, {"cookie": headers.get("cookie"), "path": hit.path,
                     "accept_encoding": headers.get("accept-encoding")}


@pytest.fixture(scope="module")
def wire_gateway() -> Iterator[tuple[GatewayServer, Upstream]]:
    from djscale.topology import RouteSpec, ServiceSpec

    upstream = Upstream(_session)
    server = GatewayServer(Gateway(services=[ServiceSpec(name="web", urls=(upstream.url,))],
                                   routes=[RouteSpec(prefix="/api/", service="web")]))
    yield server, upstream
    server.close()
    upstream.close()


def test_an_upstream_cookie_is_never_sent_on_another_clients_request(
        wire_gateway: tuple[GatewayServer, Upstream]) -> None:
    gateway, _ = wire_gateway
    login = httpx.get(f"{gateway.url}/api/login")
    assert login.headers["set-cookie"].startswith("sessionid=alice-secret")  # passed back
    assert httpx.get(f"{gateway.url}/api/me").json()["cookie"] is None      # not kept
    mine = httpx.get(f"{gateway.url}/api/me", headers={"Cookie": "sessionid=bob"})
    assert mine.json()["cookie"] == "sessionid=bob"


def test_a_redirect_is_passed_back_not_followed(
        wire_gateway: tuple[GatewayServer, Upstream]) -> None:
    gateway, upstream = wire_gateway
    upstream.hits.clear()
    r = httpx.get(f"{gateway.url}/api/moved")
    assert (r.status_code, r.headers["location"]) == (302, "/api/elsewhere")
    assert [hit.path for hit in upstream.hits] == ["/api/moved"]


def test_a_compressed_answer_passes_through_as_sent(
        wire_gateway: tuple[GatewayServer, Upstream]) -> None:
    gateway, _ = wire_gateway
    r = httpx.get(f"{gateway.url}/api/gzip", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.json() == {"packed": True}           # decoded by this client, not the gateway


def test_the_upstream_sees_the_clients_accept_encoding_and_no_other(
        wire_gateway: tuple[GatewayServer, Upstream]) -> None:
    gateway, _ = wire_gateway
    with httpx.Client() as client:
        del client.headers["accept-encoding"]  # a client that accepts no coding at all
        assert client.get(f"{gateway.url}/api/ae").json()["accept_encoding"] == "identity"
        asked = client.get(f"{gateway.url}/api/ae", headers={"Accept-Encoding": "br"})
        assert asked.json()["accept_encoding"] == "br"


def test_concurrent_requests_share_a_bounded_pool_of_upstream_connections(
        wire_gateway: tuple[GatewayServer, Upstream]) -> None:
    import asyncio

    gateway, upstream = wire_gateway
    upstream.hits.clear()

    async def waves() -> list[int]:
        codes = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            for _ in range(3):      # three waves of 8 concurrent requests
                answers = await asyncio.gather(*(client.get(f"/api/n/{i}") for i in range(8)))
                codes += [a.status_code for a in answers]
        return codes

    assert asyncio.run(waves()) == [200] * 24
    assert len(upstream.hits) == 24
    assert len({hit.peer_port for hit in upstream.hits}) <= 8   # connections reused
