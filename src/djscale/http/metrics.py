"""The ``/metrics`` endpoint and the request metrics middleware.

:func:`metrics_view` exports every metric of the process in Prometheus' text format:
in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, see :mod:`djscale.metrics`) it sums
the values all gunicorn workers of this app server wrote, otherwise it exports the
default registry. Metrics of other libraries using prometheus_client (e.g.
django-prometheus, when installed) come out too.

Set ``DJSCALE["METRICS_TOKEN"]`` to require ``Authorization: Bearer <token>``; without it,
keep ``/metrics`` off the public load balancer (it names views and services).

:class:`MetricsMiddleware` counts requests by method, status class and view name and
records their latency: ``djscale_http_request_duration_seconds`` from the moment Django
got the request, and, when the load balancer stamped it with ``X-Request-Start`` (djscale's
nginx and HAProxy configs do: ``t=<epoch>`` in seconds, milliseconds or microseconds),
``djscale_http_request_latency_seconds`` from that moment: the time the request waited
for a free worker is in it. A busy sync-worker app server shows overload only there: its
requests queue in the listen backlog, where Django's own timing cannot see them. The
local autoscaler follows it (:mod:`djscale.cluster.autoscale`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from djscale import conf, metrics

__all__ = ["MetricsMiddleware", "metrics_view", "request_start"]


def _registry() -> CollectorRegistry:
    if metrics.multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def metrics_view(request: HttpRequest) -> HttpResponse:
    """All metrics in Prometheus' text exposition format."""
    token = conf.get().metrics.token
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(
                given[7:].encode(), str(token).encode())):
            return HttpResponse("metrics need a bearer token\n", status=401,
                                content_type="text/plain")
    response = HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


class MetricsMiddleware:
    """Count every request and time it (``djscale_http_requests_total`` and friends)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Time the request and count it by method, status class and view."""
        started = time.perf_counter()
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            method = request.method if request.method in _METHODS else "other"
            match = getattr(request, "resolver_match", None)
            view = (match.view_name or "?") if match is not None else "<unresolved>"
            metrics.HTTP_REQUESTS.labels(method, f"{status // 100}xx", view).inc()
            metrics.HTTP_REQUEST_DURATION.labels(method).observe(time.perf_counter() - started)
            since = request_start(request.META.get("HTTP_X_REQUEST_START", ""))
            if since is not None:
                metrics.HTTP_REQUEST_LATENCY.labels(method).observe(
                    min(_MAX_LATENCY, max(0.0, time.time() - since)))


_MAX_LATENCY = 3600.0


def request_start(value: str) -> float | None:
    """The epoch seconds of an ``X-Request-Start`` header (``t=...``), None if unreadable.

    Accepts seconds with a fraction (nginx's ``$msec``), or whole milliseconds or
    microseconds (HAProxy's ``date(0,us)``), told apart by their size.
    """
    raw = value.strip().removeprefix("t=")
    if not raw or len(raw) > 32:
        return None
    try:
        number = float(raw)
    except ValueError:
        return None
    if number != number or number <= 0:  # NaN or nonsense
        return None
    if "." not in raw:
        if number > 1e14:
            number /= 1e6
        elif number > 1e11:
            number /= 1e3
    return number


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
