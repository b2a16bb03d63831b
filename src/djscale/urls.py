"""URLs djscale serves: ``path("", include("djscale.urls"))``.

``health/live`` and ``health/ready`` (also answered early by
:class:`~djscale.http.health.HealthCheckMiddleware`) and ``metrics``.
"""

from __future__ import annotations

from django.urls import path

from djscale.http import health
from djscale.http.metrics import metrics_view

urlpatterns = [
    path("health/live", health.live, name="djscale-health-live"),
    path("health/ready", health.ready, name="djscale-health-ready"),
    path("metrics", metrics_view, name="djscale-metrics"),
]
