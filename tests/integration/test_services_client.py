"""The sync service client against real HTTP servers: budget, breaker, pooling, context."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.test import RequestFactory, override_settings

from djscale.cluster.supervisor import free_port
from djscale.errors import CircuitOpen, ConfigurationError, ServiceTimeout, ServiceUnavailable
from djscale.services import (
    AsyncServiceClient,
    CircuitBreaker,
    PropagationMiddleware,
    RetryPolicy,
    ServiceClient,
    service_client,
)
from djscale.services import client as client_module
from tests.integration.test_gateway import Hit, Reply, Upstream

pytestmark = pytest.mark.integration


def _echo(hit: Hit) -> Reply:
    if hit.path.startswith("/slow"):
        time.sleep(2)
    if hit.path.startswith("/login"):
        return 200, {"Set-Cookie": "sessionid=alice; Path=/"}, {}
    return 200, {}, {"path": hit.path, "headers": {k.lower(): v for k, v in hit.headers.items()}}


class HangUp:
    """A TCP server that reads each request, then closes the connection unanswered."""

    def __init__(self) -> None:
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536):
                    self.requests += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(_echo)
    yield server
    server.close()


def test_calls_reuse_pooled_connections(upstream: Upstream) -> None:
    with ServiceClient(name="echo", urls=[upstream.url]) as client:
        upstream.hits.clear()
        for _ in range(5):
            assert client.get("/x").status_code == 200
    assert len({hit.peer_port for hit in upstream.hits}) == 1


def test_a_slow_service_raises_service_timeout_at_the_call_budget(upstream: Upstream) -> None:
    with ServiceClient(name="echo", urls=[upstream.url], timeout=0.3,
                       retry=RetryPolicy(retries=3)) as client:
        started = time.monotonic()
        with pytest.raises(ServiceTimeout, match=r"'echo' did not answer GET /slow within 0\.3s"):
            client.get("/slow")
        assert time.monotonic() - started < 1.0   # the retries share the 0.3 s budget


def test_unreachable_service_opens_its_breaker_then_fails_fast() -> None:
    breaker = CircuitBreaker("ghost", minimum_calls=2, failure_rate=1.0, reset_timeout=30)
    with ServiceClient(name="ghost", urls=[f"http://127.0.0.1:{free_port()}"],
                       retry=RetryPolicy(retries=1, backoff=0.01), breaker=breaker) as client:
        with pytest.raises(ServiceUnavailable, match="cannot reach service 'ghost'"):
            client.get("/x")
        assert breaker.state == "open"       # 2 attempts = 2 failures
        with pytest.raises(CircuitOpen):
            client.get("/x")


def test_request_id_of_the_current_request_is_sent_on(upstream: Upstream) -> None:
    from djscale.http.request_id import use_request_id

    with ServiceClient(name="echo", urls=[upstream.url]) as client, use_request_id("rid-42"):
        seen = client.get("/x").json()["headers"]
    assert seen["x-request-id"] == "rid-42"


def test_propagation_middleware_forwards_the_callers_authorization(upstream: Upstream) -> None:
    with ServiceClient(name="echo", urls=[upstream.url]) as client:
        def view(request: object) -> dict[str, str]:
            headers: dict[str, str] = client.get("/x").json()["headers"]
            return headers

        request = RequestFactory().get("/", HTTP_AUTHORIZATION="Token caller")
        seen = PropagationMiddleware(view)(request)
        assert seen["authorization"] == "Token caller"
        assert "authorization" not in client.get("/x").json()["headers"]


def test_service_client_is_built_from_django_settings(upstream: Upstream) -> None:

    services = {"echo": {"URLS": [upstream.url], "TIMEOUT": 1.0, "RETRIES": 0,
                         "BREAKER": {"MINIMUM_CALLS": 3}}}
    with override_settings(DJSCALE={"SERVICES": services}):
        client_module._clients.clear()
        try:
            client = service_client("echo")
            assert service_client("echo") is client
            assert client.get("/x").status_code == 200
            assert client.transport.timeout == 1.0
            assert client.breaker.minimum_calls == 3
            with pytest.raises(ConfigurationError, match=r"no service 'carts'.*\[services.carts\]"):
                service_client("carts")
        finally:
            client_module._clients.clear()


def test_a_shared_client_keeps_no_cookie_from_an_answer(upstream: Upstream) -> None:
    with ServiceClient(name="echo", urls=[upstream.url]) as client:
        assert client.get("/login").headers["set-cookie"].startswith("sessionid=alice")
        assert "cookie" not in client.get("/x").json()["headers"]


def test_credentials_in_the_service_url_are_sent_as_basic_auth(upstream: Upstream) -> None:
    url = upstream.url.replace("http://", "http://svc:s3cret@")
    with ServiceClient(name="echo", urls=[url]) as client:
        seen = client.get("/x").json()["headers"]
    assert seen["authorization"] == "Basic c3ZjOnMzY3JldA=="   # svc:s3cret
    assert seen["host"] == upstream.url.removeprefix("http://")


# ------------------------------------------------------------------ the async client


def _run(coro_fn: object) -> object:
    return asyncio.run(coro_fn())  # type: ignore[operator]


def test_async_calls_reuse_one_pooled_connection(upstream: Upstream) -> None:
    async def calls() -> list[int]:
        client = AsyncServiceClient(name="echo", urls=[upstream.url])
        try:
            return [(await client.get("/x")).status_code for _ in range(5)]
        finally:
            await client.aclose()

    upstream.hits.clear()
    assert _run(calls) == [200] * 5
    assert len({hit.peer_port for hit in upstream.hits}) == 1


def test_async_post_cut_off_after_it_was_received_is_not_sent_again() -> None:
    server = HangUp()

    async def post() -> None:
        client = AsyncServiceClient(name="hangup", urls=[server.url],
                                    retry=RetryPolicy(retries=3, backoff=0.01))
        try:
            await client.post("/orders", json={"sku": 1})
        finally:
            await client.aclose()

    try:
        with pytest.raises(ServiceUnavailable, match="cannot reach service 'hangup'"):
            _run(post)
        assert server.requests == 1          # it may have been applied: never twice
    finally:
        server.close()


def test_async_get_cut_off_is_retried() -> None:
    server = HangUp()

    async def get() -> None:
        client = AsyncServiceClient(name="hangup", urls=[server.url],
                                    retry=RetryPolicy(retries=2, backoff=0.01))
        try:
            await client.get("/orders")
        finally:
            await client.aclose()

    try:
        with pytest.raises(ServiceUnavailable):
            _run(get)
        assert server.requests == 3
    finally:
        server.close()


def test_async_unreachable_service_is_retried_then_unavailable() -> None:
    breaker = CircuitBreaker("ghost", minimum_calls=2, failure_rate=1.0, reset_timeout=30)

    async def post() -> None:
        client = AsyncServiceClient(name="ghost", urls=[f"http://127.0.0.1:{free_port()}"],
                                    retry=RetryPolicy(retries=1, backoff=0.01),
                                    breaker=breaker)
        try:
            await client.post("/x", json={})     # never sent: safe to retry even a POST
        finally:
            await client.aclose()

    with pytest.raises(ServiceUnavailable, match=r"cannot reach service 'ghost'.*Connect"):
        _run(post)
    assert breaker.state == "open"              # 2 attempts = 2 failures


def test_async_slow_service_raises_service_timeout_at_the_call_budget(
        upstream: Upstream) -> None:
    async def slow() -> None:
        client = AsyncServiceClient(name="echo", urls=[upstream.url], timeout=0.3,
                                    retry=RetryPolicy(retries=3))
        try:
            await client.get("/slow")
        finally:
            await client.aclose()

    started = time.monotonic()
    with pytest.raises(ServiceTimeout, match=r"'echo' did not answer GET /slow within 0\.3s"):
        _run(slow)
    assert time.monotonic() - started < 1.0


def test_a_cancelled_trial_call_frees_the_half_open_breaker(upstream: Upstream) -> None:
    now = [0.0]
    breaker = CircuitBreaker("echo", minimum_calls=1, failure_rate=1.0, reset_timeout=10,
                             clock=lambda: now[0])
    breaker.on_failure()                        # open; half-open 10 s later
    now[0] += 10

    async def cancel_then_call() -> int:
        client = AsyncServiceClient(name="echo", urls=[upstream.url], breaker=breaker)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.get("/slow"), 0.2)   # the trial, cancelled
            assert breaker.state == "half-open"
            return (await client.get("/x")).status_code            # the slot is free again
        finally:
            await client.aclose()

    assert _run(cancel_then_call) == 200
    assert breaker.state == "closed"


def test_async_post_with_expect_continue_sends_its_body_at_once() -> None:
    """A server that never sends '100 Continue' still gets the body (no deadlock)."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            body = data.partition(b"\r\n\r\n")[2]
            while len(body) < 5000:
                body += conn.recv(65536)
            got.append(body)
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()

    async def post() -> int:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        client = AsyncServiceClient(name="plain", urls=[url], timeout=3.0)
        try:
            r = await client.post("/upload", content=b"x" * 5000,
                                  headers={"Expect": "100-continue"})
            return r.status_code
        finally:
            await client.aclose()

    try:
        assert _run(post) == 201
        assert got == [b"x" * 5000]
    finally:
        server.close()


def test_async_client_accepts_an_answer_with_a_large_header() -> None:
    big = "a=" + "x" * 12000                    # over aiohttp's default 8 KiB per line
    upstream = Upstream(lambda hit: (200, {"Content-Security-Policy": big}, {}))

    async def get() -> str:
        client = AsyncServiceClient(name="big", urls=[upstream.url])
        try:
            return (await client.get("/x")).headers["content-security-policy"]
        finally:
            await client.aclose()

    try:
        assert _run(get) == big
    finally:
        upstream.close()
