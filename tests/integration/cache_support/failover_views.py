"""Views (and URLs) of the Redis Cluster failover test: sessions and a rate limit.

Served by real gunicorn app servers (settings :mod:`.failover_settings`).
Each app process builds its own :class:`RateLimiter` on ``DJSCALE["REDIS_URLS"]`` (the
Redis Cluster) on first use, with an event loop thread for its async client.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

from djscale import conf
from djscale.http.metrics import metrics_view
from djscale.services.ratelimit import RateLimiter

LIMIT = 40            # requests per client per WINDOW
WINDOW = 300.0        # longer than the test: admissions never expire during it
PREFIX = "failover:rl:"

_state: dict[str, Any] = {}
_lock = threading.Lock()


def limiter() -> tuple[RateLimiter, asyncio.AbstractEventLoop]:
    """This process's limiter and the loop its client runs on (made after a fork)."""
    with _lock:
        if _state.get("pid") != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="limiter-loop", daemon=True).start()
            urls = ",".join(conf.get().cache.redis_urls)
            _state.update(pid=os.getpid(), loop=loop, limiter=RateLimiter.from_url(
                urls, limit=LIMIT, window=WINDOW, prefix=PREFIX, retry_for=15))
        return _state["limiter"], _state["loop"]


def login(request: HttpRequest, name: str) -> JsonResponse:
    request.session.cycle_key()
    request.session["user"] = name
    request.session["n"] = 0
    return JsonResponse({"user": name})


def bump(request: HttpRequest) -> JsonResponse:
    n = int(request.session["n"]) + 1
    request.session["n"] = n
    return JsonResponse({"user": request.session["user"], "n": n})


def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.session.get("user"), "n": request.session.get("n")})


def limited(request: HttpRequest, client_id: str) -> JsonResponse:
    rl, loop = limiter()
    decision = asyncio.run_coroutine_threadsafe(rl.hit(client_id), loop).result(timeout=30)
    return JsonResponse({"allowed": decision.allowed}, status=200 if decision.allowed else 429)


urlpatterns = [
    path("login/<str:name>/", login),
    path("bump/", bump),
    path("read/", read),
    path("limited/<str:client_id>/", limited),
    path("metrics", metrics_view),
]
