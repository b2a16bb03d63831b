"""The HTTP edge: health endpoints, Cache-Control, request ids, trusted proxies."""
