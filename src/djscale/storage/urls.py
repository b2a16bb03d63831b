"""``path("", include("djscale.storage.urls"))``: media served at ``MEDIA_URL``."""

from __future__ import annotations

from django.conf import settings
from django.urls import path

from djscale.storage.views import serve_media

_prefix = (settings.MEDIA_URL or "/media/").lstrip("/") or "media/"
if not _prefix.endswith("/"):
    _prefix += "/"

urlpatterns = [
    path(f"{_prefix}<path:name>", serve_media, name="djscale-media"),
]
