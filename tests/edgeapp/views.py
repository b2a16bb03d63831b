"""Test views exercising the Cache-Control rules and the trusted-proxy middleware."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import cache_control

from djscale.http import current_request_id
from djscale.http.cache_control import public_cache

log = logging.getLogger("tests.edgeapp")


@public_cache(max_age=60, s_maxage=300)
def catalog(request: HttpRequest) -> HttpResponse:
    """Same for everyone: opts in to public caching."""
    return HttpResponse("catalog")


@public_cache(max_age=60)
def catalog_with_cookie(request: HttpRequest) -> HttpResponse:
    """Opts in, but hands out a cookie: must not be stored by shared caches."""
    response = HttpResponse("catalog")
    response.set_cookie("ab_test", "b")
    return response


@cache_control(public=True, max_age=30)
def django_public(request: HttpRequest) -> HttpResponse:
    """Marks itself public with Django's own decorator."""
    return HttpResponse("public by django")


def account(request: HttpRequest) -> HttpResponse:
    """Personal data; no opt-in."""
    name = request.user.get_username() if request.user.is_authenticated else "anonymous"
    return HttpResponse(f"hello {name}")


def start_session(request: HttpRequest) -> HttpResponse:
    """Store something in the session (sets the session cookie)."""
    request.session["cart"] = [1, 2]
    return HttpResponse("session started")


def whoami(request: HttpRequest) -> JsonResponse:
    """What Django believes about the client, and the request id."""
    log.info("whoami called")
    return JsonResponse({
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "peer": request.META.get("DJSCALE_PEER_ADDR"),
        "secure": request.is_secure(),
        "host": request.get_host(),
        "request_id": current_request_id(),
    })
