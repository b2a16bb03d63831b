"""URLs djscale serves: ``path("", include("djscale.urls"))``."""

from __future__ import annotations

from django.urls import path

from djscale.http import health

urlpatterns = [
    path("health/live", health.live, name="djscale-health-live"),
    path("health/ready", health.ready, name="djscale-health-ready"),
]
