"""Prometheus metrics of every djscale layer, and how they are collected.

This module owns the metric *definitions* (names, labels, help) and small typed helpers
that the other layers call to record a fact (``record_router_decision(group=..., target=...)``);
it must not import those layers. The ``/metrics`` view lives in :mod:`djscale.http.metrics`.

Metrics (all prefixed ``djscale_``; counters get ``_total`` from prometheus_client):

=====================================  ===================================================
``http_requests_total``                requests by method, status class and view
``http_request_duration_seconds``      request latency histogram by method
``http_request_latency_seconds``       latency since the load balancer got the request
                                       (its ``X-Request-Start``): queueing included
``router_decisions_total``             reads/writes routed to primary / replica / fallback
``replica_lag_seconds`` / ``_bytes``   last measured lag of each replica
``shard_queries_total``                queries routed to each physical shard (by the shard
                                       router, scatter-gather included)
``shard_moved_retries_total``          writes refused by a moved shard's old database, retried
``db_queries_total``                   every query by database alias and role (primary,
                                       replica, shard), counted by an execute wrapper
``cache_requests_total``               cache hits and misses per level (l1, l2)
``db_replica_fallback_total``          reads sent to the primary for want of a replica
``db_read_failover_total``             reads retried elsewhere after a replica failed
``cache_invalidations_total``          invalidation messages sent / received (L1 bus)
``cache_stampede_waits_total``         requests that waited for another computation
``cache_computations_total``           values computed by get_or_set()/@cached, by reason
``cache_l2_errors_total``              Redis (L2) calls that failed, per cache location
``cache_l2_skipped_total``             Redis (L2) calls skipped while its breaker was open
``cache_writes_dropped_total``         cache writes lost because Redis was unreachable
``cache_l1_flushes_total``             whole-L1 flushes, by reason
``session_cache_writes_total``         session cache writes by outcome (acked, unacked, failed)
``n_plus_one_total``                   requests/tasks with an N+1 query pattern
``query_budget_exceeded_total``        requests/tasks over their query budget
``circuit_breaker_state``              0 closed, 1 half-open, 2 open, per upstream service
``outbox_backlog``                     outbox rows not yet published
``outbox_unconfirmed``                 outbox rows given up: sent again and again, never
                                       confirmed delivered
``outbox_redelivered_total``           outbox rows sent again for want of a confirmation
``health_check_up``                    1 when a readiness check passed, else 0
``process_restarts_total``             restarts of a crashed local-cluster service by the
                                       watchdog, per service and kind (its ``/metrics``)
``process_crash_loop``                 1 while the watchdog has given up on a service
=====================================  ===================================================

**Several processes** (gunicorn workers): prometheus_client keeps each process's values in
memory, so a scrape would see one random worker. Its multiprocess mode writes values to
files under ``$PROMETHEUS_MULTIPROC_DIR`` and the ``/metrics`` view sums them. The variable
must be set before the first metric is created; :func:`configure_multiprocess` (run when
this module is imported) sets it for app servers of a djscale cluster
(``$DJSCALE_STATE_DIR/metrics/<service>``). In production set it yourself, empty the
folder before gunicorn starts, and call :func:`gunicorn_child_exit` from the gunicorn
``child_exit`` hook. Gauges use the ``max``/``mostrecent`` modes so dead workers' files
never need cleaning for correct values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CACHE_COMPUTATIONS",
    "CACHE_INVALIDATIONS",
    "CACHE_L1_FLUSHES",
    "CACHE_L1_SYNCS",
    "CACHE_L1_SYNC_SECONDS",
    "CACHE_L2_ERRORS",
    "CACHE_L2_SKIPPED",
    "CACHE_REQUESTS",
    "CACHE_WRITES_DROPPED",
    "CIRCUIT_BREAKER_STATE",
    "DB_QUERIES",
    "EDGE_CACHE_EVICTIONS",
    "EDGE_PURGES",
    "EDGE_PURGE_FAILURES",
    "EDGE_PURGE_RETRIES",
    "EDGE_PURGE_SECONDS",
    "HEALTH_CHECK_UP",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "N_PLUS_ONE",
    "OUTBOX_BACKLOG",
    "OUTBOX_REDELIVERED",
    "OUTBOX_UNCONFIRMED",
    "PROCESS_CRASH_LOOP",
    "PROCESS_RESTARTS",
    "QUERY_BUDGET_EXCEEDED",
    "READ_FAILOVERS",
    "REPLICA_FALLBACKS",
    "REPLICA_LAG_BYTES",
    "REPLICA_LAG_SECONDS",
    "ROUTER_DECISIONS",
    "SESSION_CACHE_WRITES",
    "SHARD_MOVED_RETRIES",
    "SHARD_QUERIES",
    "STAMPEDE_WAITS",
    "SUPERVISION_SAMPLES",
    "QueryCounter",
    "configure_multiprocess",
    "database_role",
    "declare_cache_location",
    "declare_replica_group",
    "declare_session_cache",
    "declare_sharded_model",
    "gunicorn_child_exit",
    "instrument_queries",
    "multiprocess_dir",
    "record_cache",
    "record_cache_computation",
    "record_circuit_state",
    "record_crash_loop",
    "record_edge_purge",
    "record_invalidation",
    "record_l1_flush",
    "record_l2_error",
    "record_l2_skipped",
    "record_n_plus_one",
    "record_outbox_backlog",
    "record_process_restart",
    "record_query_budget_exceeded",
    "record_read_failover",
    "record_replica_fallback",
    "record_replica_lag",
    "record_router_decision",
    "record_session_cache_write",
    "record_shard_moved_retry",
    "record_shard_query",
    "record_stampede_wait",
    "record_write_dropped",
]

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess folder in use, or None in single-process mode."""
    return os.environ.get(_ENV) or os.environ.get("prometheus_multiproc_dir") or None  # noqa: SIM112


def configure_multiprocess() -> str | None:
    """Turn on multiprocess mode for a gunicorn app server of a djscale cluster.

    Does nothing when ``PROMETHEUS_MULTIPROC_DIR`` is already set (the operator chose) or
    when this process is not a gunicorn worker started by the cluster. Returns the folder
    in use, if any.
    """
    current = multiprocess_dir()
    if current:
        return current
    state_dir = os.environ.get("DJSCALE_STATE_DIR")
    service = os.environ.get("DJSCALE_SERVICE")
    if not (state_dir and service and "gunicorn" in sys.modules):
        return None
    folder = Path(state_dir) / "metrics" / service
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # fall back to per-process metrics rather than failing start-up
    os.environ[_ENV] = str(folder)
    # prometheus_client picks its value class when it is first imported: pick again so
    # every metric created from now on writes to the shared folder.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return str(folder)


def gunicorn_child_exit(server: object, worker: object) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live-gauge files."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(int(getattr(worker, "pid", 0)))  # type: ignore[no-untyped-call]


configure_multiprocess()

# ------------------------------------------------------------------ HTTP (djscale.http)

HTTP_REQUESTS = Counter(
    "djscale_http_requests", "HTTP requests answered by Django, by method, status class and view.",
    ["method", "status", "view"],
)
HTTP_REQUEST_DURATION = Histogram(
    "djscale_http_request_duration_seconds", "Time Django spent answering a request.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_REQUEST_LATENCY = Histogram(
    "djscale_http_request_latency_seconds",
    "Time from the load balancer receiving a request (X-Request-Start) to Django answering "
    "it: queueing in front of the workers included.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HEALTH_CHECK_UP = Gauge(
    "djscale_health_check_up", "1 when the last readiness check passed, else 0.",
    ["check"], multiprocess_mode="mostrecent",
)

# ------------------------------------------------------------------ databases

ROUTER_DECISIONS = Counter(
    "djscale_router_decisions", "Database routing decisions: primary, replica or fallback.",
    ["group", "operation", "target"],
)
REPLICA_LAG_SECONDS = Gauge(
    "djscale_replica_lag_seconds", "Last measured replication lag of a replica in seconds.",
    ["alias"], multiprocess_mode="mostrecent",
)
REPLICA_LAG_BYTES = Gauge(
    "djscale_replica_lag_bytes", "Last measured replication lag of a replica in bytes of WAL.",
    ["alias"], multiprocess_mode="mostrecent",
)
REPLICA_FALLBACKS = Counter(
    "djscale_db_replica_fallback",
    "Reads sent to the primary of a replication group instead of a replica, by reason "
    "(no_replica: none up and within max_lag; read_your_writes: none has replayed the "
    "user's last write yet).",
    ["group", "reason"],
)
READ_FAILOVERS = Counter(
    "djscale_db_read_failover",
    "Reads retried on another server after a replica connection failed.",
    ["alias"],
)
SHARD_QUERIES = Counter(
    "djscale_shard_queries",
    "Queries routed to each physical shard database by the shard router.", ["shard"],
)
SHARD_MOVED_RETRIES = Counter(
    "djscale_shard_moved_retries",
    "Writes refused by a logical shard's old database after a move (stale shard map, or "
    "waiting out the move's freeze) and retried on its new database, by model.",
    ["model"],
)

DB_QUERIES = Counter(
    "djscale_db_queries", "Queries executed, by database alias and role (primary, replica, shard).",
    ["alias", "role"],
)

# ------------------------------------------------------------------ cache

CACHE_REQUESTS = Counter(
    "djscale_cache_requests", "Cache lookups by level (l1, l2) and result (hit, miss).",
    ["level", "result"],
)
CACHE_INVALIDATIONS = Counter(
    "djscale_cache_invalidations", "Cache invalidations by direction (sent, received).",
    ["direction"],
)
STAMPEDE_WAITS = Counter(
    "djscale_cache_stampede_waits",
    "Cache misses that waited for another process to compute the value.",
)
CACHE_COMPUTATIONS = Counter(
    "djscale_cache_computations",
    "Values computed by get_or_set()/@cached (stampede-protected), by reason (miss, early).",
    ["reason"],
)
CACHE_L2_ERRORS = Counter(
    "djscale_cache_l2_errors", "Redis (L2) calls that failed (connection or timeout).",
    ["location"],
)
CACHE_L2_SKIPPED = Counter(
    "djscale_cache_l2_skipped", "Redis (L2) calls skipped because its circuit was open.",
    ["location"],
)
CACHE_WRITES_DROPPED = Counter(
    "djscale_cache_writes_dropped", "Cache writes dropped because Redis (L2) was unreachable.",
    ["location"],
)
CACHE_L1_FLUSHES = Counter(
    "djscale_cache_l1_flushes", "Whole-L1 flushes (lost subscription, clear()).", ["reason"],
)
CACHE_L1_SYNCS = Counter(
    "djscale_cache_l1_sync",
    "Waits for every other process to evict what this one wrote (wait_for_l1, tag "
    "invalidations), by result: ok, timeout (a live process did not acknowledge), "
    "unavailable (Redis).",
    ["result"],
)
CACHE_L1_SYNC_SECONDS = Histogram(
    "djscale_cache_l1_sync_seconds",
    "How long those waits took, until every live process acknowledged or the timeout.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# ------------------------------------------------------------------ edge (djscale.edge)

EDGE_PURGES = Counter(
    "djscale_edge_purges", "Invalidation batches purged at the edge (every layer done).",
)
EDGE_PURGE_RETRIES = Counter(
    "djscale_edge_purge_retries", "Purge attempts that failed and were retried.",
)
EDGE_PURGE_FAILURES = Counter(
    "djscale_edge_purge_failures",
    "Invalidation batches given up after every retry (stale until the edge TTL).",
)
EDGE_CACHE_EVICTIONS = Counter(
    "djscale_edge_cache_evictions", "TieredCache entries evicted by tag with an edge purge.",
)
EDGE_PURGE_SECONDS = Histogram(
    "djscale_edge_purge_seconds", "From the write's commit to the edge purged.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

SESSION_CACHE_WRITES = Counter(
    "djscale_session_cache_writes",
    "Session cache writes by outcome (acked, unacked: WAIT timed out, failed: Redis down).",
    ["result"],
)

# ------------------------------------------------------------------ query inspector

N_PLUS_ONE = Counter(
    "djscale_n_plus_one",
    "Inspected requests/tasks in which one line ran the same query shape THRESHOLD+ times.",
    ["relation", "where"],
)
QUERY_BUDGET_EXCEEDED = Counter(
    "djscale_query_budget_exceeded",
    "Requests/tasks/views that ran more queries than their budget.",
    ["where"],
)

# ------------------------------------------------------------------ services and events

CIRCUIT_BREAKER_STATE = Gauge(
    "djscale_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["service"], multiprocess_mode="max",
)
OUTBOX_BACKLOG = Gauge(
    "djscale_outbox_backlog", "Outbox events written but not yet published.",
    multiprocess_mode="mostrecent",
)

OUTBOX_UNCONFIRMED = Gauge(
    "djscale_outbox_unconfirmed",
    "Outbox events sent REDELIVER_ATTEMPTS times again without a confirmed delivery: given up.",
    multiprocess_mode="mostrecent",
)
OUTBOX_REDELIVERED = Counter(
    "djscale_outbox_redelivered",
    "Outbox events sent again because their delivery was not confirmed in time.",
)

# ------------------------------------------------------------------ local cluster watchdog

PROCESS_RESTARTS = Counter(
    "djscale_process_restarts",
    "Restarts of a crashed service of the local cluster by its watchdog.",
    ["service", "kind"],
)
PROCESS_CRASH_LOOP = Gauge(
    "djscale_process_crash_loop",
    "1 while the watchdog has given up restarting a service (crash loop), else 0.",
    ["service"], multiprocess_mode="max",
)
SUPERVISION_SAMPLES = ("djscale_process_restarts_total", "djscale_process_restarts_created",
                       "djscale_process_crash_loop")
"""Sample names the watchdog's ``/metrics`` serves (nothing else of this registry)."""


def record_process_restart(*, service: str, kind: str, count: int = 1) -> None:
    """Count ``count`` restarts of local-cluster service ``service`` by the watchdog."""
    PROCESS_RESTARTS.labels(service, kind).inc(count)


def record_crash_loop(*, service: str, looping: bool) -> None:
    """Record whether the watchdog gave up on ``service`` (crash loop)."""
    PROCESS_CRASH_LOOP.labels(service).set(1 if looping else 0)


_BREAKER = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


# Series of every label value known up front start at 0 (Prometheus' advice: a series that
# appears only with its first event hides from rate() and from absence alerts until then).


def declare_replica_group(*, group: str, replicas: tuple[str, ...] | list[str]) -> None:
    """Start the fallback and failover counters of replication group ``group`` at 0."""
    for reason in ("no_replica", "read_your_writes"):
        REPLICA_FALLBACKS.labels(group, reason)
    for alias in replicas:
        READ_FAILOVERS.labels(alias)


def declare_cache_location(*, location: str) -> None:
    """Start the counters of one TieredCache location (and its L1 bus) at 0."""
    for counter in (CACHE_L2_ERRORS, CACHE_L2_SKIPPED, CACHE_WRITES_DROPPED):
        counter.labels(location)
    for reason in ("miss", "early"):
        CACHE_COMPUTATIONS.labels(reason)
    for direction in ("sent", "received"):
        CACHE_INVALIDATIONS.labels(direction)
    for reason in ("resubscribed", "subscription_lost", "redis_back", "listener_error",
                   "remote_clear"):
        CACHE_L1_FLUSHES.labels(reason)
    for result in ("ok", "timeout", "unavailable"):
        CACHE_L1_SYNCS.labels(result)


def declare_session_cache() -> None:
    """Start the session cache write counters at 0."""
    for result in ("acked", "unacked", "failed"):
        SESSION_CACHE_WRITES.labels(result)


def declare_sharded_model(*, model: str) -> None:
    """Start the moved-shard retry counter of sharded model ``model`` at 0."""
    SHARD_MOVED_RETRIES.labels(model)


def record_router_decision(*, group: str, operation: Literal["read", "write"],
                           target: Literal["primary", "replica", "fallback"]) -> None:
    """Count one routing decision (``fallback``: a read sent to the primary for lack of
    a usable replica)."""
    ROUTER_DECISIONS.labels(group, operation, target).inc()


def record_replica_lag(*, alias: str, seconds: float | None, lag_bytes: int | None) -> None:
    """Record the lag last measured on replica ``alias`` (None: unknown, not recorded)."""
    if seconds is not None:
        REPLICA_LAG_SECONDS.labels(alias).set(seconds)
    if lag_bytes is not None:
        REPLICA_LAG_BYTES.labels(alias).set(lag_bytes)


def record_replica_fallback(*, group: str,
                            reason: Literal["no_replica", "read_your_writes"]) -> None:
    """Count one read of ``group`` sent to its primary instead of a replica."""
    REPLICA_FALLBACKS.labels(group, reason).inc()


def record_read_failover(*, alias: str) -> None:
    """Count one read retried elsewhere after replica ``alias`` failed."""
    READ_FAILOVERS.labels(alias).inc()


def record_shard_query(*, shard: str) -> None:
    """Count one query routed to physical shard ``shard``."""
    SHARD_QUERIES.labels(shard).inc()


def record_shard_moved_retry(*, model: str) -> None:
    """Count one write of ``model`` retried on a shard's new database after a move."""
    SHARD_MOVED_RETRIES.labels(model).inc()


def record_cache(*, level: Literal["l1", "l2"], hit: bool, count: int = 1) -> None:
    """Count ``count`` cache lookups at ``level`` that hit or missed."""
    CACHE_REQUESTS.labels(level, "hit" if hit else "miss").inc(count)


def record_invalidation(*, direction: Literal["sent", "received"], count: int = 1) -> None:
    """Count cache invalidations sent to or received from other processes."""
    CACHE_INVALIDATIONS.labels(direction).inc(count)


def record_stampede_wait() -> None:
    """Count one request that waited for another computation instead of recomputing."""
    STAMPEDE_WAITS.inc()


def record_cache_computation(*, reason: Literal["miss", "early"]) -> None:
    """Count one value computed by get_or_set()/@cached (a miss or an early refresh)."""
    CACHE_COMPUTATIONS.labels(reason).inc()


def record_l2_error(*, location: str) -> None:
    """Count one failed Redis (L2) call of cache ``location``."""
    CACHE_L2_ERRORS.labels(location).inc()


def record_l2_skipped(*, location: str) -> None:
    """Count one Redis (L2) call of ``location`` skipped because its breaker was open."""
    CACHE_L2_SKIPPED.labels(location).inc()


def record_write_dropped(*, location: str) -> None:
    """Count one cache write of ``location`` lost because Redis was unreachable."""
    CACHE_WRITES_DROPPED.labels(location).inc()


def record_l1_sync(*, result: Literal["ok", "timeout", "unavailable"], seconds: float) -> None:
    """Count one wait for the other processes' L1 evictions, and how long it took."""
    CACHE_L1_SYNCS.labels(result).inc()
    if result != "unavailable":
        CACHE_L1_SYNC_SECONDS.observe(seconds)


def record_l1_flush(*, reason: str) -> None:
    """Count one flush of the whole in-process (L1) cache."""
    CACHE_L1_FLUSHES.labels(reason).inc()


def record_session_cache_write(*, result: Literal["acked", "unacked", "failed"]) -> None:
    """Count one session cache write by outcome."""
    SESSION_CACHE_WRITES.labels(result).inc()


def record_n_plus_one(*, relation: str, where: str) -> None:
    """Count one request/task in which ``relation`` was loaded one row at a time."""
    N_PLUS_ONE.labels(relation=relation, where=where).inc()


def record_query_budget_exceeded(*, where: str) -> None:
    """Count one request/task/view that ran more queries than its budget."""
    QUERY_BUDGET_EXCEEDED.labels(where=where).inc()


def record_circuit_state(*, service: str, state: str) -> None:
    """Record a circuit breaker's state: ``closed``, ``half-open`` or ``open``."""
    try:
        CIRCUIT_BREAKER_STATE.labels(service).set(_BREAKER[state.lower()])
    except KeyError:
        raise ValueError(f"unknown circuit breaker state {state!r}; "
                         "expected closed, half-open or open") from None


def record_outbox_backlog(*, rows: int) -> None:
    """Record how many outbox events wait to be published."""
    OUTBOX_BACKLOG.set(rows)


def record_outbox_unconfirmed(*, rows: int) -> None:
    """Record how many outbox events were given up without a confirmed delivery."""
    OUTBOX_UNCONFIRMED.set(rows)


def record_outbox_redelivered(*, rows: int) -> None:
    """Count outbox events sent again because their delivery was not confirmed."""
    OUTBOX_REDELIVERED.inc(rows)


# ------------------------------------------------------------------ query counting


def database_role(alias: str) -> str:
    """``primary``, ``replica`` or ``shard`` for a Django alias (from :mod:`djscale.conf`)."""
    from djscale import conf

    config = conf.get(validate=False)  # a label never fails a query
    group = config.replication.group_of(alias)
    if group is not None and alias in group.replicas:
        return "replica"
    if config.sharding.is_shard(alias):
        return "shard"
    return "primary"


class QueryCounter:
    """An execute wrapper counting the queries of one connection (``djscale_db_queries``)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._child: Any = None

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
        """Count, then run the query."""
        if self._child is None:
            self._child = DB_QUERIES.labels(self.alias, database_role(self.alias))
        self._child.inc()
        return execute(sql, params, many, context)


def _count_queries(sender: object, connection: Any, **kwargs: Any) -> None:
    from djscale import conf

    if not conf.get(validate=False).metrics.query_metrics:
        return
    wrappers = connection.execute_wrappers
    if not any(isinstance(w, QueryCounter) for w in wrappers):
        # First, not last: `with connection.execute_wrapper(...)` pops the last wrapper on
        # exit, and a connection opened inside such a block must not lose that one.
        wrappers.insert(0, QueryCounter(connection.alias))


def instrument_queries() -> None:
    """Count every query per alias from now on (idempotent; ``QUERY_METRICS=False`` opts out)."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_count_queries, dispatch_uid="djscale.metrics.count_queries")


instrument_queries()


def record_edge_purge(*, result: Literal["ok", "retry", "failed"], seconds: float = 0.0,
                      evicted: int = 0) -> None:
    """Count one purge attempt's outcome (``ok`` also records its delay and evictions)."""
    if result == "ok":
        EDGE_PURGES.inc()
        EDGE_PURGE_SECONDS.observe(seconds)
        if evicted:
            EDGE_CACHE_EVICTIONS.inc(evicted)
    elif result == "retry":
        EDGE_PURGE_RETRIES.inc()
    else:
        EDGE_PURGE_FAILURES.inc()
