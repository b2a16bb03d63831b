"""``path("", include("djscale.storage.urls"))``: media served at ``MEDIA_URL``'s path."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.urls import path

from djscale.storage.views import serve_media


def media_prefix(media_url: str | None) -> str:
    """The URL pattern prefix for ``MEDIA_URL`` (``/media/``, or a CDN URL's path)."""
    prefix = urlsplit(media_url or "").path.strip("/") or "media"
    return prefix + "/"


urlpatterns = [
    path(f"{media_prefix(settings.MEDIA_URL)}<path:name>", serve_media, name="djscale-media"),
]
