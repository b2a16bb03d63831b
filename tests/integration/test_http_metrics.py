"""Metrics: helpers, request counting, query counting per alias, the /metrics view."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from djscale import metrics


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_helpers_fill_the_metrics() -> None:
    before = _value("djscale_router_decisions_total", group="default", operation="read",
                    target="fallback")
    metrics.record_router_decision(group="default", operation="read", target="fallback")
    assert _value("djscale_router_decisions_total", group="default", operation="read",
                  target="fallback") == before + 1
    metrics.record_circuit_state(service="users", state="half-open")
    assert _value("djscale_circuit_breaker_state", service="users") == 1
    with pytest.raises(ValueError, match="unknown circuit breaker state"):
        metrics.record_circuit_state(service="users", state="ajar")


@pytest.mark.django_db(databases="__all__")
def test_every_query_is_counted_per_alias_and_role() -> None:
    cases = [("default", "primary"), ("default_replica1", "replica"), ("shard2", "shard")]
    before = {a: _value("djscale_db_queries_total", alias=a, role=r) for a, r in cases}
    for alias, _ in cases:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    for alias, role in cases:
        assert _value("djscale_db_queries_total", alias=alias, role=role) >= before[alias] + 1


@pytest.mark.django_db
def test_metrics_view_counts_requests_by_view_and_status() -> None:
    client = Client()
    before = _value("djscale_http_requests_total", method="GET", status="2xx",
                    view="tests.edgeapp.views.catalog")
    client.get("/edge/catalog")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"djscale_http_requests_total" in response.content
    assert _value("djscale_http_requests_total", method="GET", status="2xx",
                  view="tests.edgeapp.views.catalog") == before + 1


def test_metrics_token_is_required_when_set() -> None:

    with override_settings(DJSCALE={"METRICS_TOKEN": "t0k"}):
        assert Client().get("/metrics").status_code == 401
        assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0k").status_code == 200


def test_django_prometheus_metrics_come_out_of_the_same_endpoint() -> None:
    pytest.importorskip("django_prometheus")
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory
    from django_prometheus.middleware import (
        PrometheusAfterMiddleware,
        PrometheusBeforeMiddleware,
    )

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    handler = PrometheusBeforeMiddleware(PrometheusAfterMiddleware(view))
    handler(RequestFactory().get("/anything"))
    text = Client().get("/metrics").content.decode()
    assert "django_http_requests_before_middlewares_total" in text
    assert "django_http_responses_total_by_status_total" in text
