"""Serve media from the default storage, whichever backend it is.

For the local cluster and for private buckets; public media in production are better
served by the bucket or a CDN directly (``custom_domain``). GET/HEAD only; a name that
escapes the storage or does not exist is a 404.
"""

from __future__ import annotations

import mimetypes

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.http import require_safe

__all__ = ["serve_media"]


@require_safe
def serve_media(request: HttpRequest, name: str) -> FileResponse:
    """The file ``name`` of the default storage."""
    try:
        if not default_storage.exists(name):
            raise Http404("no such media file")
        handle = default_storage.open(name, "rb")
    except (SuspiciousFileOperation, ValueError, OSError):
        raise Http404("no such media file") from None
    content_type, _ = mimetypes.guess_type(name)
    response = FileResponse(handle, content_type=content_type or "application/octet-stream")
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "public, max-age=3600"
    return response
