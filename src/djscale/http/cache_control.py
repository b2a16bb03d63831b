"""Cache-Control that is safe by default, for browsers, CDNs and shared caches.

The rule: **only an anonymous GET/HEAD response of a view that opted in may be public.**
:class:`CacheControlMiddleware` enforces it on every response:

1. *Personal* responses are never public. A response is personal when the request is
   authenticated (``request.user``), carries ``Authorization`` or the session cookie,
   touched the session, or the response sets a cookie. Such responses lose ``public`` and
   ``s-maxage`` and get ``private`` plus ``no-cache`` (revalidate each time); responses
   that set a cookie get ``no-store`` (a shared cache must never replay a
   ``Set-Cookie``).
2. Other unsafe-method responses (POST, ...) get ``no-store``.
3. Anonymous GET/HEAD responses of views that opted in, with a cacheable status, get
   ``public, max-age=N`` (and ``s-maxage``/``stale-while-revalidate`` when asked) and
   ``Vary: Cookie, Authorization, Accept-Encoding``: a CDN keyed on the URL alone would
   otherwise give one user's page to another.
4. Everything else without a Cache-Control of its own gets ``private, no-cache``.

Opt in per view with :func:`public_cache` (a decorator), or per URL with
``DJSCALE["PUBLIC_CACHE_PATHS"] = [(r"^/catalog/", 60), ...]`` (regex on the path,
max-age in seconds). A view that sets ``public`` itself (Django's ``cache_control``
decorator) counts as opting in, and is still made private for personal requests.

Conditional GET: GET/HEAD responses get an ``ETag`` (when they have none and are not
``no-store`` or streaming) and ``If-None-Match``/``If-Modified-Since`` are answered with 304,
as Django's ConditionalGetMiddleware does (which is then not needed).

Order: after the static-files middleware (whose hashed files are ``immutable``) and
**before** ``SessionMiddleware`` (so this middleware sees the session cookie it sets).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import (
    get_conditional_response,
    patch_vary_headers,
    set_response_etag,
)
from django.utils.http import parse_http_date_safe

from djscale import conf

__all__ = [
    "CacheControlMiddleware",
    "CachePolicy",
    "is_personal",
    "path_policies",
    "public_cache",
    "request_started",
]

F = TypeVar("F", bound=Callable[..., Any])

SAFE_METHODS = ("GET", "HEAD")
# RFC 9111 "heuristically cacheable" statuses plus 206 handled by caches themselves.
CACHEABLE_STATUS = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_ATTR = "djscale_cache_policy"
_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "djscale_request_started", default=None)


def request_started() -> float | None:
    """When the current request reached :class:`CacheControlMiddleware` (epoch seconds).

    :func:`djscale.edge.tags.add_tags` compares it with the invalidations of a response's
    tags: data read before an invalidation must not be stored by the edge.
    """
    return _started.get()


@dataclass(frozen=True)
class CachePolicy:
    """How a view's anonymous responses may be cached by browsers and shared caches."""

    max_age: int
    s_maxage: int | None = None
    stale_while_revalidate: int | None = None

    def header(self) -> str:
        """The Cache-Control value for an anonymous, cacheable response."""
        parts = ["public", f"max-age={self.max_age}"]
        if self.s_maxage is not None:
            parts.append(f"s-maxage={self.s_maxage}")
        if self.stale_while_revalidate is not None:
            parts.append(f"stale-while-revalidate={self.stale_while_revalidate}")
        return ", ".join(parts)


def public_cache(*, max_age: int, s_maxage: int | None = None,
                 stale_while_revalidate: int | None = None) -> Callable[[F], F]:
    """Let anonymous GET/HEAD responses of the decorated view be cached publicly.

    Authenticated or cookie-setting responses of the same view stay private; the
    middleware decides per response.
    """
    if max_age < 0 or (s_maxage is not None and s_maxage < 0):
        raise ValueError("max_age and s_maxage must be >= 0 seconds")
    policy = CachePolicy(max_age, s_maxage, stale_while_revalidate)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)
        setattr(wrapper, _ATTR, policy)
        return wrapper  # type: ignore[return-value]
    return decorate


@lru_cache(maxsize=4)
def _path_policies(entries: tuple[tuple[str, int], ...]) -> tuple[
        tuple[re.Pattern[str], CachePolicy], ...]:
    return tuple((re.compile(pattern), CachePolicy(max_age)) for pattern, max_age in entries)


def path_policies() -> tuple[tuple[re.Pattern[str], CachePolicy], ...]:
    """``DJSCALE["PUBLIC_CACHE_PATHS"]`` compiled (validated by :mod:`djscale.conf`)."""
    return _path_policies(conf.get().http.public_cache_paths)


def _policy_for_path(path: str) -> CachePolicy | None:
    for pattern, policy in path_policies():
        if pattern.search(path):
            return policy
    return None


def is_personal(request: HttpRequest, response: HttpResponseBase) -> bool:
    """True when the response may depend on who asked (or hands out a cookie)."""
    if response.cookies:
        return True
    meta = request.META
    if meta.get("HTTP_AUTHORIZATION"):
        return True
    if settings.SESSION_COOKIE_NAME in request.COOKIES:
        return True
    session = getattr(request, "session", None)
    if session is not None and getattr(session, "accessed", False) and not session.is_empty():
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and getattr(user, "is_authenticated", False))


def _directives(value: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, arg = part.partition("=")
        found[name.strip().lower()] = arg.strip() or None
    return found


def _render(directives: dict[str, str | None]) -> str:
    return ", ".join(k if v is None else f"{k}={v}" for k, v in directives.items())


class CacheControlMiddleware:
    """Make every response's Cache-Control safe; public only when allowed (see module)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        path_policies()  # fail at start-up, not on the first request

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Handle the request, then fix the response's caching headers."""
        token = _started.set(time.time())
        try:
            response = self.get_response(request)
        finally:
            _started.reset(token)
        return self.process(request, response)

    def process_view(self, request: HttpRequest, view: Callable[..., Any], args: Any,
                     kwargs: Any) -> None:
        """Remember the view's opt-in, if it has one."""
        policy = getattr(view, _ATTR, None)
        if policy is None:
            # class-based views: the attribute may be on the class
            policy = getattr(getattr(view, "view_class", None), _ATTR, None)
        request._djscale_cache_policy = policy  # type: ignore[attr-defined]

    def process(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        """Apply the rules of the module docstring to ``response``."""
        existing = _directives(response.get("Cache-Control", ""))
        safe = request.method in SAFE_METHODS
        if is_personal(request, response):
            directives = {k: v for k, v in existing.items()
                          if k not in ("public", "s-maxage", "stale-while-revalidate")}
            directives["private"] = None
            if response.cookies:
                directives["no-store"] = None
            if "no-store" not in directives and "max-age" not in directives:
                directives["no-cache"] = None
            response["Cache-Control"] = _render(directives)
            patch_vary_headers(response, ("Cookie",))
        elif not safe:
            directives = {k: v for k, v in existing.items()
                          if k not in ("public", "s-maxage", "max-age",
                                       "stale-while-revalidate")}
            directives["no-store"] = None
            response["Cache-Control"] = _render(directives)
        else:
            policy: CachePolicy | None = getattr(request, "_djscale_cache_policy", None)
            if policy is None:
                policy = _policy_for_path(request.path_info)
            if "public" in existing or (
                    policy is not None and response.status_code in CACHEABLE_STATUS
                    and "no-store" not in existing and "private" not in existing):
                if "public" not in existing and policy is not None:
                    response["Cache-Control"] = policy.header()
                patch_vary_headers(response, ("Cookie", "Authorization", "Accept-Encoding"))
            elif not existing:
                response["Cache-Control"] = "private, no-cache"
        if safe:
            return self._conditional(request, response)
        return response

    def _conditional(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if response.streaming or response.status_code != 200 or \
                not isinstance(response, HttpResponse):
            return response
        if "no-store" not in _directives(response.get("Cache-Control", "")) and \
                not response.has_header("ETag"):
            set_response_etag(response)
        etag = response.get("ETag")
        last_modified = response.get("Last-Modified")
        last_modified_ts = parse_http_date_safe(last_modified) if last_modified else None
        if etag or last_modified_ts:
            answer = get_conditional_response(request, etag=etag,
                                              last_modified=last_modified_ts,
                                              response=response)
            return answer if answer is not None else response
        return response
