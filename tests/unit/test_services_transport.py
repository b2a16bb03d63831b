"""Resilient transport: budget, retries of idempotent calls only, breaker, clear errors.

The upstream is an httpx.MockTransport (pure logic); real servers are exercised in
tests/integration/test_services_client.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from djscale.errors import CircuitOpen, ServiceTimeout, ServiceUnavailable
from djscale.services import (
    AsyncServiceClient,
    CircuitBreaker,
    RetryPolicy,
    ServiceClient,
    propagate,
)
from djscale.services.transport import ResilientTransport

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, *, retries: int = 2, timeout: float = 5.0,
            breaker: CircuitBreaker | None = None) -> tuple[ServiceClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = ServiceClient(name="users", urls=["http://users.internal:8101/api"],
                           timeout=timeout, retry=RetryPolicy(retries=retries, backoff=0.001),
                           breaker=breaker, transport=httpx.MockTransport(record))
    return client, seen


def _flaky(failures: int, status: int = 503) -> Handler:
    count = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        return httpx.Response(status if count["n"] <= failures else 200, json={"ok": True})

    return handler


def test_get_is_retried_after_503_until_it_succeeds() -> None:
    client, seen = _client(_flaky(2))
    assert client.get("/users/1").status_code == 200
    assert len(seen) == 3


def test_retries_stop_after_the_configured_number_and_return_the_last_answer() -> None:
    client, seen = _client(_flaky(10), retries=2)
    assert client.get("/users/1").status_code == 503
    assert len(seen) == 3


def test_post_is_not_retried_without_an_idempotency_key() -> None:
    client, seen = _client(_flaky(1))
    assert client.post("/orders", json={"x": 1}).status_code == 503
    assert len(seen) == 1


def test_post_with_an_idempotency_key_is_retried_with_the_same_key_and_body() -> None:
    client, seen = _client(_flaky(1))
    assert client.post("/orders", json={"x": 1}, idempotency_key="k-1").status_code == 200
    assert [r.headers["Idempotency-Key"] for r in seen] == ["k-1", "k-1"]
    assert seen[0].content == seen[1].content == b'{"x":1}'


def test_500_is_not_retried_but_counts_for_the_breaker() -> None:
    breaker = CircuitBreaker("users", minimum_calls=2, failure_rate=0.5)
    client, seen = _client(_flaky(10, status=500), breaker=breaker)
    client.get("/a")
    client.get("/b")
    assert len(seen) == 2
    assert breaker.state == "open"


def test_connection_refused_raises_service_unavailable_naming_the_service() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, seen = _client(refuse, retries=1)
    with pytest.raises(ServiceUnavailable, match="cannot reach service 'users'") as info:
        client.post("/orders")            # never sent: retried even though it is a POST
    assert info.value.service == "users"
    assert len(seen) == 2


def test_read_timeout_of_a_post_is_not_retried() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client, seen = _client(slow)
    with pytest.raises(ServiceTimeout, match="did not answer POST /api/orders within 5s"):
        client.post("/orders")
    assert len(seen) == 1


def test_each_attempt_gets_what_is_left_of_the_call_budget() -> None:
    budgets: list[dict[str, float]] = []
    flaky = _flaky(1)

    def handler(request: httpx.Request) -> httpx.Response:
        budgets.append(dict(request.extensions["timeout"]))
        return flaky(request)

    client, _ = _client(handler, timeout=2.0)
    client.get("/users/1")
    first, second = budgets
    assert first["read"] <= 2.0
    assert second["read"] < first["read"]
    assert first["connect"] <= 1.0


def test_per_call_timeout_and_retries_override_the_defaults() -> None:
    client, seen = _client(_flaky(5), timeout=5.0)
    assert client.get("/users/1", timeout=0.5, retries=0).status_code == 503
    assert len(seen) == 1
    assert seen[0].extensions["timeout"]["read"] <= 0.5


def test_open_breaker_refuses_without_calling() -> None:
    breaker = CircuitBreaker("users", minimum_calls=1, failure_rate=1.0, reset_timeout=30)
    breaker.before_call()
    breaker.on_failure()
    client, seen = _client(_flaky(0), breaker=breaker)
    with pytest.raises(CircuitOpen, match="circuit breaker of service 'users' is open"):
        client.get("/users/1")
    assert seen == []


def test_request_id_and_auth_are_propagated_and_urls_keep_their_base_path() -> None:
    client, seen = _client(_flaky(0))
    with propagate(request_id="req-123", authorization="Token abc"):
        client.get("/users/1?fields=name")
    client.get("/users/2")
    assert str(seen[0].url) == "http://users.internal:8101/api/users/1?fields=name"
    assert seen[0].headers["X-Request-ID"] == "req-123"
    assert seen[0].headers["Authorization"] == "Token abc"
    assert "Authorization" not in seen[1].headers


def test_a_path_that_could_change_the_host_is_refused() -> None:
    client, _ = _client(_flaky(0))
    with pytest.raises(ValueError, match="single '/'"):
        client.get("//evil.example/x")


def test_calls_are_spread_over_the_service_urls() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(200)

    client = ServiceClient(name="users", urls=["http://a:1", "http://b:1"],
                           transport=httpx.MockTransport(handler))
    for _ in range(4):
        client.get("/x")
    assert seen == ["a", "b", "a", "b"]


def test_async_client_retries_the_same_way() -> None:
    count = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        return httpx.Response(502 if count["n"] == 1 else 200)

    async def main() -> int:
        client = AsyncServiceClient(name="users", urls=["http://users:1"],
                                    retry=RetryPolicy(backoff=0.001),
                                    transport=httpx.MockTransport(handler))
        try:
            return (await client.get("/x")).status_code
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 200
    assert count["n"] == 2


def test_invalid_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        ResilientTransport(service="x", timeout=0)
