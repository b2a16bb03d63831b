"""Health endpoints for load balancers and orchestrators.

``/health/live`` says the process can answer (no I/O). ``/health/ready`` checks what a
request needs (every primary database and the default cache) and answers **503** when
any of them fails, so a load balancer stops sending traffic here. The result is cached
in-process for ``READY_CACHE_SECONDS`` so that probes cannot overload the database.
Output names checks and their status only: never hosts, users or connection strings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, JsonResponse

__all__ = ["live", "ready", "run_checks"]

READY_CACHE_SECONDS = 1.0

_lock = threading.Lock()
_last: tuple[float, bool, dict[str, Any]] | None = None


def live(request: HttpRequest) -> JsonResponse:
    """200 while the process runs; touches nothing else."""
    return JsonResponse({"status": "ok"})


def _check_database(alias: str) -> Callable[[], None]:
    def check() -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    return check


def _check_cache() -> None:
    cache = caches["default"]
    cache.set("djscale:health", "1", 5)


def _checks() -> dict[str, Callable[[], None]]:
    groups = getattr(settings, "DJSCALE", {}).get("REPLICATION_GROUPS", {})
    primaries = [g["PRIMARY"] for g in groups.values()] or ["default"]
    checks = {f"db:{alias}": _check_database(alias) for alias in primaries}
    checks["cache"] = _check_cache
    return checks


def run_checks() -> tuple[bool, dict[str, Any]]:
    """Run every readiness check; return (all ok, per-check results)."""
    results: dict[str, Any] = {}
    ok = True
    for name, check in _checks().items():
        started = time.perf_counter()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            ok = False
            results[name] = {"ok": False, "error": type(exc).__name__}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return ok, results


def ready(request: HttpRequest) -> JsonResponse:
    """200 when every dependency answers, else 503; cached briefly per process."""
    global _last
    now = time.monotonic()
    with _lock:
        cached = _last
        if cached is None or now - cached[0] > READY_CACHE_SECONDS:
            ok, results = run_checks()
            _last = cached = (now, ok, results)
    _, ok, results = cached
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": results},
                        status=200 if ok else 503)
