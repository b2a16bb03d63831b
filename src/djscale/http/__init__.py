"""The HTTP edge: health, Cache-Control, request ids, trusted proxies, metrics endpoint.

Middleware, in the order they belong in ``MIDDLEWARE`` (see :data:`MIDDLEWARE`)::

    djscale.http.proxies.TrustedProxyMiddleware      client IP/scheme from trusted proxies
    djscale.http.request_id.RequestIdMiddleware      X-Request-ID in, out and in the logs
    djscale.http.metrics.MetricsMiddleware           request counts and latency
    djscale.http.health.HealthCheckMiddleware        /health/* before host checks/sessions
    djscale.http.input.InputValidationMiddleware     (optional) NUL/undecodable input -> 400
    djscale.http.static.StaticFilesMiddleware        (optional) whitenoise, immutable statics
    djscale.http.cache_control.CacheControlMiddleware   safe Cache-Control, Vary, ETag
    ... SessionMiddleware, CommonMiddleware, AuthenticationMiddleware, ...

:func:`current_request_id` is the id of the request being handled (for service calls
and Celery tasks).
"""

from djscale.http.request_id import current_request_id, use_request_id

__all__ = ["MIDDLEWARE", "current_request_id", "use_request_id"]

MIDDLEWARE = [
    "djscale.http.proxies.TrustedProxyMiddleware",
    "djscale.http.request_id.RequestIdMiddleware",
    "djscale.http.metrics.MetricsMiddleware",
    "djscale.http.health.HealthCheckMiddleware",
    "djscale.http.cache_control.CacheControlMiddleware",
]
"""djscale's edge middleware, in order: put it before Django's session middleware."""
