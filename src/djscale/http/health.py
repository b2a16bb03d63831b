"""Health endpoints for load balancers and orchestrators.

``/health/live`` says the process can answer (no I/O). ``/health/ready`` checks what a
request needs and answers **503** when a *critical* check fails, so a load balancer stops
sending traffic here:

- ``db:<alias>``: every primary (main group and shards): ``SELECT 1``; critical.
- ``replica:<alias>``: every replica, with its lag measured against its primary by
  :mod:`djscale.db.lag` (the router's measure); a replica that is down or too far
  behind makes the answer ``degraded`` (reads fall back to the primary), not 503.
- ``cache``: the default cache's backend answers (``ping()`` for djscale's TieredCache,
  which reaches Redis itself, since its in-process L1 could hide an outage; a write and
  read otherwise). Critical only for caches that fail requests when their server is
  down; TieredCache degrades to compute-through and sessions are database-backed, so a
  Redis outage makes the answer ``degraded``, not 503: taking every app server out of
  the load balancer because Redis is away would turn a degradation into an outage.
- ``broker``: a ``PING`` of ``CELERY_BROKER_URL`` when it is set; not critical (events
  wait in the outbox while the broker is away).

Every check runs in a worker thread with a deadline (``TIMEOUT``, 1 s), all at once, so a
database that hangs cannot hold the probe longer than the deadline; a check still running
from an earlier probe is reported as timed out rather than started again. The result is
kept in-process for ``CACHE_SECONDS`` (1 s) so probes cannot overload the databases.

**Draining**: while the *drain file* exists the ready check answers 503 ``draining``
(``touch`` it before taking the server out, remove it to put it back). Its path is
``DJSCALE["HEALTH"]["DRAIN_FILE"]``, by default ``$DJSCALE_STATE_DIR/drain/<service>``
for app servers of a djscale cluster.

Output names checks, status, timings, lag and the *class* of an error: never hosts,
users, messages or connection strings. With ``DJSCALE["HEALTH"]["TOKEN"]`` set, the
per-check details are shown only to requests with ``Authorization: Bearer <token>``.

:class:`HealthCheckMiddleware` answers both paths before any other middleware, so probes
need no allowed ``Host`` header, open no session and are not logged as page views.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from djscale import conf, metrics
from djscale.db import lag

__all__ = [
    "Check",
    "CheckResult",
    "HealthCheckMiddleware",
    "checks",
    "drain_file",
    "live",
    "readiness",
    "ready",
    "reset",
    "validate_config",
]

LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"

def _config() -> conf.HealthSettings:
    # DJSCALE["HEALTH"] as djscale.conf declares, defaults and validates it.
    return conf.get().health


def validate_config() -> None:
    """Raise ConfigurationError when a djscale setting (``DJSCALE["HEALTH"]``...) is unusable."""
    conf.get()


@dataclass(frozen=True)
class Check:
    """One readiness check: a callable that raises when unhealthy and may return details."""

    name: str
    run: Callable[[], dict[str, Any] | None]
    critical: bool = True


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check, safe to show (no messages, hosts or credentials)."""

    name: str
    ok: bool
    critical: bool
    ms: float
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data: dict[str, Any] = {"ok": self.ok, "critical": self.critical, "ms": self.ms}
        if self.error:
            data["error"] = self.error
        data.update(self.detail)
        return data


class CheckFailed(Exception):
    """A check ran but found the dependency unusable (e.g. replica too far behind)."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


# ------------------------------------------------------------------ the checks


def _close_connections() -> None:
    # Each probe thread must not keep connections: a stopped primary would otherwise be
    # probed through a dead socket, and idle threads would pin connections forever.
    for conn in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):  # closing a broken connection may fail
            conn.close()


def _database(alias: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            _close_connections()
        return None
    return check


def _replica(alias: str, primary: str,
             max_lag_seconds: float) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        # The one lag measure (djscale.db.lag): the primary first, then the replica.
        history = lag.history_of(primary)
        try:
            try:
                with connections[primary].cursor() as cursor:
                    primary_lsn = lag.read_primary(cursor, history=history)
            except DatabaseError:
                primary_lsn = None  # lag unknown; the db:<primary> check says why
            with connections[alias].cursor() as cursor:
                position = lag.read_replica(cursor)
        finally:
            _close_connections()
        measured = lag.measure(alias, primary_lsn, position, history=history)
        lag_seconds = (None if measured.lag_seconds is None
                       else round(measured.lag_seconds, 3))
        detail = {"lag_seconds": lag_seconds, "lag_bytes": measured.lag_bytes}
        if not position.in_recovery:
            raise CheckFailed("NotInRecovery", detail)
        if lag_seconds is not None and lag_seconds > max_lag_seconds:
            raise CheckFailed("LagTooHigh", {**detail, "max_lag_seconds": max_lag_seconds})
        return detail
    return check


def _cache() -> dict[str, Any] | None:
    cache = caches["default"]
    ping = getattr(cache, "ping", None)
    if callable(ping):
        if not ping():
            raise CheckFailed("CacheUnavailable")
        return None
    token = f"{os.getpid()}:{time.monotonic()}"
    cache.set("djscale:health", token, 10)
    if cache.get("djscale:health") != token:
        raise CheckFailed("ReadBackMismatch")
    return None


def _broker(url: str, timeout: float) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        if url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                          socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        else:
            from kombu import Connection  # type: ignore[attr-defined]

            with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
                conn.ensure_connection(max_retries=1, timeout=timeout)
        return None
    return check


def checks() -> list[Check]:
    """The readiness checks for the current settings."""
    cfg = _config()
    groups = conf.get().replication.groups
    found: list[Check] = []
    if groups:
        for group in groups.values():
            found.append(Check(f"db:{group.primary}", _database(group.primary)))
        if cfg.check_replicas:
            for group in groups.values():
                max_lag = group.max_lag_seconds
                for alias in group.replicas:
                    found.append(Check(f"replica:{alias}",
                                       _replica(alias, group.primary, max_lag),
                                       critical=False))
    else:
        for alias, entry in settings.DATABASES.items():
            test: Any = entry.get("TEST") or {}
            if not test.get("MIRROR"):
                found.append(Check(f"db:{alias}", _database(alias)))
    if "default" in settings.CACHES:
        # A cache that degrades by itself (TieredCache has ping()) is not critical.
        degrades = callable(getattr(caches["default"], "ping", None))
        found.append(Check("cache", _cache, critical=not degrades))
    broker = getattr(settings, "CELERY_BROKER_URL", "")
    if cfg.check_broker and broker:
        found.append(Check("broker", _broker(str(broker), cfg.timeout),
                           critical=False))
    return found


# ------------------------------------------------------------------ running them

_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="djscale-health")
_inflight: dict[str, Future[dict[str, Any] | None]] = {}
_lock = threading.Lock()
_last: tuple[float, list[CheckResult]] | None = None


def _run(selected: list[Check], timeout: float) -> list[CheckResult]:
    started = time.perf_counter()
    futures: dict[str, Future[dict[str, Any] | None]] = {}
    stuck: set[str] = set()
    for check in selected:
        previous = _inflight.get(check.name)
        if previous is not None and not previous.done():
            stuck.add(check.name)
            continue
        futures[check.name] = _inflight[check.name] = _executor.submit(check.run)
    wait_futures(list(futures.values()), timeout=timeout)
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    results = []
    for check in selected:
        future = futures.get(check.name)
        if future is None or not future.done():
            result = CheckResult(check.name, False, check.critical, elapsed, "Timeout")
        else:
            exc = future.exception()
            if exc is None:
                result = CheckResult(check.name, True, check.critical, elapsed,
                                     detail=future.result() or {})
            elif isinstance(exc, CheckFailed):
                result = CheckResult(check.name, False, check.critical, elapsed, exc.reason,
                                     exc.detail)
            else:
                result = CheckResult(check.name, False, check.critical, elapsed,
                                     type(exc).__name__)
        metrics.HEALTH_CHECK_UP.labels(check.name).set(1 if result.ok else 0)
        results.append(result)
    return results


def readiness(*, use_cache: bool = True) -> list[CheckResult]:
    """Run every readiness check (or return the results of the last second)."""
    global _last
    cfg = _config()
    with _lock:
        now = time.monotonic()
        if use_cache and _last is not None and now - _last[0] < cfg.cache_seconds:
            return _last[1]
        results = _run(checks(), cfg.timeout)
        _last = (time.monotonic(), results)
        return results


def reset() -> None:
    """Forget the cached result (tests, or after a configuration change)."""
    global _last
    with _lock:
        _last = None


def drain_file() -> Path | None:
    """The file whose existence takes this server out of rotation, if any."""
    configured = _config().drain_file
    if configured:
        return Path(configured)
    state_dir = os.environ.get("DJSCALE_STATE_DIR")
    service = os.environ.get("DJSCALE_SERVICE")
    if state_dir and service:
        return Path(state_dir) / "drain" / service
    return None


# ------------------------------------------------------------------ views


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response


def live(request: HttpRequest) -> JsonResponse:
    """200 while the process runs; touches nothing else."""
    return _no_store(JsonResponse({"status": "ok"}))


def _may_see_details(request: HttpRequest) -> bool:
    token = _config().token
    if not token:
        return True
    given = request.META.get("HTTP_AUTHORIZATION", "")
    return given.startswith("Bearer ") and hmac.compare_digest(
        given[7:].encode(), str(token).encode())


def ready(request: HttpRequest) -> JsonResponse:
    """200 when every critical dependency answers, else 503; cached briefly per process."""
    drain = drain_file()
    if drain is not None and drain.exists():
        return _no_store(JsonResponse({"status": "draining"}, status=503))
    results = readiness()
    ok = all(r.ok for r in results if r.critical)
    status = "unavailable" if not ok else ("ok" if all(r.ok for r in results) else "degraded")
    body: dict[str, Any] = {"status": status}
    if _may_see_details(request):
        body["checks"] = {r.name: r.as_dict() for r in results}
    return _no_store(JsonResponse(body, status=200 if ok else 503))


class HealthCheckMiddleware:
    """Answer ``/health/live`` and ``/health/ready`` before any other middleware runs."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        validate_config()  # fail at start-up, not in the first probe

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Short-circuit the health paths; pass everything else on."""
        path = request.path_info.rstrip("/")
        if request.method in ("GET", "HEAD"):
            if path == LIVE_PATH:
                return live(request)
            if path == READY_PATH:
                return ready(request)
        return self.get_response(request)
