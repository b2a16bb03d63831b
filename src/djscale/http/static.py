"""Static files served by the app servers through whitenoise, ready for a CDN.

Hashed files (``app.3f2a1b.css``, from ``CompressedManifestStaticFilesStorage``) never
change, so they are sent ``public, max-age=31536000, immutable`` (one year, the longest
value HTTP caches are asked to honour); unhashed files get whitenoise's short default.
Settings::

    MIDDLEWARE = [..., "djscale.http.static.StaticFilesMiddleware",
                  "djscale.http.cache_control.CacheControlMiddleware", ...]
    STORAGES = {"staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}, ...}
    STATIC_URL = "https://cdn.example.com/static/"   # a CDN pulling from the app servers

whitenoise owns everything else (compression, range requests, index files); this module
only changes the lifetime of immutable files.
"""

from __future__ import annotations

from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]

__all__ = ["ONE_YEAR", "StaticFilesMiddleware"]

ONE_YEAR = 365 * 24 * 60 * 60


class StaticFilesMiddleware(WhiteNoiseMiddleware):  # type: ignore[misc]
    """whitenoise with a one-year lifetime for hashed (immutable) files."""

    FOREVER = ONE_YEAR
