"""ReplicaMiddleware's retry decisions (the real failover is in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from djscale.db import failover
from djscale.db.middleware import ReplicaMiddleware


def _request(method: str) -> HttpRequest:
    request = HttpRequest()
    request.method = method
    request.path = "/x"
    return request


@pytest.fixture
def replica_failed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    recovered: list[str] = []
    monkeypatch.setattr(failover, "retryable", lambda exc: ["default_replica1"])
    monkeypatch.setattr(failover, "recover", lambda aliases, reason: recovered.extend(aliases))
    return recovered


def test_a_get_is_run_again_once(replica_failed: list[str]) -> None:
    calls: list[int] = []

    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        return JsonResponse({"ok": True})

    mw = ReplicaMiddleware(lambda r: HttpResponse())
    request = _request("GET")
    mw.process_view(request, view, (), {})
    response = mw.process_exception(request, OperationalError("replica gone"))
    assert response is not None and response.status_code == 200
    assert calls == [1] and replica_failed == ["default_replica1"]
    # A second failure in the same request is not retried again.
    assert mw.process_exception(request, OperationalError("again")) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unsafe_methods_are_never_retried(replica_failed: list[str], method: str) -> None:
    mw = ReplicaMiddleware(lambda r: HttpResponse())
    request = _request(method)
    mw.process_view(request, lambda r: HttpResponse(), (), {})
    assert mw.process_exception(request, OperationalError("boom")) is None
    assert replica_failed == []


def test_a_retry_that_fails_too_hands_the_original_error_on(replica_failed: list[str],
                                                            caplog: Any) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        raise OperationalError("still broken")

    mw = ReplicaMiddleware(lambda r: HttpResponse())
    request = _request("GET")
    mw.process_view(request, view, (), {})
    assert mw.process_exception(request, OperationalError("replica gone")) is None
    assert "did not work either" in caplog.text


def test_async_requests_get_a_scope_seeded_from_their_token() -> None:
    import asyncio

    from djscale.db import consistency

    seen: list[consistency.ConsistencyState] = []

    async def get_response(request: HttpRequest) -> HttpResponse:
        seen.append(consistency.current())
        return HttpResponse()

    mw = ReplicaMiddleware(get_response)
    request = _request("GET")
    request.COOKIES["djscale_lsn"] = consistency.encode_tokens({"default": 42})
    response = asyncio.run(mw(request))
    assert seen[0].sticky and seen[0].tokens == {"default": 42}
    assert "djscale_lsn" not in response.cookies  # nothing new to tell the client


@pytest.mark.parametrize(("method", "setting", "expected"), [
    ("GET", True, None), ("HEAD", True, None), ("OPTIONS", True, None),
    ("POST", True, "primary"), ("PUT", True, "primary"), ("PATCH", True, "primary"),
    ("DELETE", True, "primary"), ("POST", False, None),
])
def test_a_request_that_may_write_reads_from_the_primary(method: str, setting: bool,
                                                         expected: str | None) -> None:
    from django.test import override_settings

    from djscale.db import consistency, use_replica

    seen: list[str | None] = []

    def get_response(request: HttpRequest) -> HttpResponse:
        seen.append(consistency.forced())
        with use_replica():  # a view may still ask for a replica
            seen.append(consistency.forced())
        return HttpResponse()

    with override_settings(DJSCALE={"PRIMARY_FOR_UNSAFE_METHODS": setting}):
        ReplicaMiddleware(get_response)(_request(method))  # conf rebuilds on setting_changed
    assert seen == [expected, "replica"]
    assert consistency.forced() is None
