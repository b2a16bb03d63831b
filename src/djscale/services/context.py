"""What a service call carries from the request that caused it: request id and auth.

Outgoing calls send the current request id (``X-Request-ID``) and, when one is bound,
the caller's ``Authorization`` header, so the called service logs the same id and
checks the same user. The request id comes from :func:`propagate` when set, else from
:func:`djscale.http.request_id.current_request_id` (the request-id middleware), read
lazily so this package works without it. :class:`PropagationMiddleware` binds the
incoming request's ``Authorization`` for the duration of a Django request.

Values live in :class:`~contextvars.ContextVar` objects: they follow sync and async code
and are not shared between concurrent requests.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

__all__ = [
    "AUTHORIZATION",
    "REQUEST_ID",
    "PropagationMiddleware",
    "current_authorization",
    "current_request_id",
    "outgoing_headers",
    "propagate",
]

REQUEST_ID = "X-Request-ID"
AUTHORIZATION = "Authorization"

_request_id: ContextVar[str | None] = ContextVar("djscale_services_request_id", default=None)
_authorization: ContextVar[str | None] = ContextVar("djscale_services_auth", default=None)


def _http_request_id() -> str | None:
    try:
        module = importlib.import_module("djscale.http.request_id")
    except ImportError:
        return None
    getter = getattr(module, "current_request_id", None)
    value = getter() if callable(getter) else None
    return value if isinstance(value, str) else None


def current_request_id() -> str | None:
    """The request id outgoing calls send: :func:`propagate`'s, else the middleware's."""
    return _request_id.get() or _http_request_id()


def current_authorization() -> str | None:
    """The ``Authorization`` value outgoing calls forward, or None."""
    return _authorization.get()


@contextlib.contextmanager
def propagate(*, request_id: str | None = None,
              authorization: str | None = None) -> Iterator[None]:
    """Send ``request_id`` and ``authorization`` with every service call in the block."""
    tokens = []
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    if authorization is not None:
        tokens.append((_authorization, _authorization.set(authorization)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def outgoing_headers(*, forward_auth: bool = True) -> dict[str, str]:
    """Headers that carry the current context to another service."""
    headers = {}
    request_id = current_request_id()
    if request_id:
        headers[REQUEST_ID] = request_id
    auth = current_authorization() if forward_auth else None
    if auth:
        headers[AUTHORIZATION] = auth
    return headers


class PropagationMiddleware:
    """Django middleware: service calls made while handling a request forward its
    ``Authorization`` header (and its ``X-Request-ID`` when no request-id middleware
    runs)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = _is_coroutine(get_response)
        if self._async:
            from asgiref.sync import markcoroutinefunction

            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        """Handle ``request`` with its auth (and id) bound for outgoing calls."""
        if self._async:
            return self._acall(request)
        with self._bound(request):
            return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        with self._bound(request):
            response: Awaitable[Any] = self.get_response(request)
            return await response

    @staticmethod
    def _bound(request: Any) -> contextlib.AbstractContextManager[None]:
        headers = getattr(request, "headers", {})
        request_id = None if _http_request_id() else headers.get(REQUEST_ID)
        return propagate(request_id=request_id or None,
                         authorization=headers.get(AUTHORIZATION) or None)


def _is_coroutine(func: Callable[..., Any]) -> bool:
    from asgiref.sync import iscoroutinefunction

    return bool(iscoroutinefunction(func))
