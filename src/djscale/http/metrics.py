"""The ``/metrics`` endpoint and the request metrics middleware.

:func:`metrics_view` exports every metric of the process in Prometheus' text format:
in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, see :mod:`djscale.metrics`) it sums
the values all gunicorn workers of this app server wrote, otherwise it exports the
default registry. Metrics of other libraries using prometheus_client (e.g.
django-prometheus, when installed) come out too.

Set ``DJSCALE["METRICS_TOKEN"]`` to require ``Authorization: Bearer <token>``; without it,
keep ``/metrics`` off the public load balancer (it names views and services).

:class:`MetricsMiddleware` counts requests by method, status class and view name and
records their latency.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from djscale import conf, metrics

__all__ = ["MetricsMiddleware", "metrics_view"]


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


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
