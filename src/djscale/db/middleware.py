"""HTTP side of replica routing: read-your-writes tokens and failover of GET requests.

:class:`ReplicaMiddleware` (add ``"djscale.db.middleware.ReplicaMiddleware"`` to
``MIDDLEWARE``, anywhere after ``SessionMiddleware``):

- opens a consistency scope per request, seeded from the signed ``djscale_lsn`` cookie
  and/or the ``X-Djscale-Lsn`` header (for API clients that keep no cookies); when the
  request wrote, it sets both on the response with the primary's WAL position, so the
  user's next requests read from a replica only once it has replayed that write;
- sends every read of a request that may write (any method but GET, HEAD, OPTIONS) to
  the primary, unless ``PRIMARY_FOR_UNSAFE_METHODS`` is off;
- when a safe-method view (GET, HEAD, OPTIONS) fails because a replica connection broke
  and no transaction is open, marks the replica down, drops its connection and runs the
  view once more (now routed to another replica or the primary).

Works under WSGI and ASGI. Streaming responses that fail while streaming cannot be
retried (the status line has been sent).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponseBase

from djscale.db import config, consistency, failover

__all__ = ["COOKIE_NAME", "HEADER_NAME", "ReplicaMiddleware"]

COOKIE_NAME = "djscale_lsn"
HEADER_NAME = "X-Djscale-Lsn"
_META_HEADER = "HTTP_X_DJSCALE_LSN"
log = logging.getLogger("djscale.db.middleware")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VIEW = "_djscale_view"
_RETRIED = "_djscale_retried"


def request_tokens(request: HttpRequest) -> dict[str, int]:
    """The read-your-writes tokens a request carries (cookie and header merged)."""
    age = config.cookie_age()
    tokens = consistency.decode_tokens(request.COOKIES.get(COOKIE_NAME), max_age=age)
    for group, lsn in consistency.decode_tokens(request.META.get(_META_HEADER),
                                                max_age=age).items():
        tokens[group] = max(lsn, tokens.get(group, -1))
    return tokens


def _reads_for(request: HttpRequest) -> contextlib.AbstractContextManager[object]:
    """``use_primary()`` for a request that may write (``PRIMARY_FOR_UNSAFE_METHODS``).

    Only a write pins a request to the primary, and a view reads before it writes: the
    row it changes and saves (from a replica, a change committed a moment before would be
    written back), the rows it refers to (a replica would not have one created a moment
    before).
    """
    if request.method not in SAFE_METHODS and config.primary_for_unsafe_methods():
        return consistency.use_primary()
    return contextlib.nullcontext()


class ReplicaMiddleware:
    """Read-your-writes across requests and one retry of reads whose replica died."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with consistency.scope(request_tokens(request)) as state, _reads_for(request):
            response: HttpResponseBase = self.get_response(request)
            consistency.finish(state)
        return self._send_tokens(request, response, state)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        with consistency.scope(request_tokens(request)) as state, _reads_for(request):
            response = await get_response(request)
            # Capturing the LSN runs a query: not on the event loop's thread.
            from asgiref.sync import sync_to_async

            await sync_to_async(consistency.finish)(state)
        return self._send_tokens(request, response, state)

    def _send_tokens(self, request: HttpRequest, response: HttpResponseBase,
                     state: consistency.ConsistencyState) -> HttpResponseBase:
        if state.changed and state.tokens:
            value = consistency.encode_tokens(state.tokens)
            response.set_cookie(COOKIE_NAME, value, max_age=config.cookie_age(),
                                httponly=True, samesite="Lax", secure=request.is_secure())
            response[HEADER_NAME] = value
        return response

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any],
                     view_args: tuple[Any, ...], view_kwargs: dict[str, Any]) -> None:
        """Remember the view, so that a failed read can run it again."""
        setattr(request, _VIEW, (view_func, view_args, view_kwargs))

    def process_exception(self, request: HttpRequest,
                          exception: Exception) -> HttpResponseBase | None:
        """Run a safe-method view once more when it failed on a broken replica."""
        if request.method not in SAFE_METHODS or getattr(request, _RETRIED, False):
            return None
        view = getattr(request, _VIEW, None)
        if view is None:
            return None
        failed = failover.retryable(exception)
        if not failed:
            return None
        failover.recover(failed, f"{type(exception).__name__}: {str(exception).strip()[:200]}")
        setattr(request, _RETRIED, True)
        func, args, kwargs = view
        try:
            response: HttpResponseBase = _atomic_like_django(func)(request, *args, **kwargs)
            render = getattr(response, "render", None)
            if callable(render) and not getattr(response, "is_rendered", True):
                response = render()
        except Exception:
            # The original error goes on to the other middleware (a 503 from
            # DatabaseUnavailableMiddleware, or Django's 500); the retry's is logged.
            log.exception("retrying %s %s after replica %s failed did not work either",
                          request.method, request.path, ", ".join(failed))
            return None
        return response


def _atomic_like_django(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a view the way Django's handler does (ATOMIC_REQUESTS, async views)."""
    non_atomic: set[str] = getattr(func, "_non_atomic_requests", set())
    for alias, settings_dict in connections.settings.items():
        if settings_dict.get("ATOMIC_REQUESTS") and alias not in non_atomic:
            func = transaction.atomic(using=alias)(func)
    if iscoroutinefunction(func):
        func = async_to_sync(func)
    return func
