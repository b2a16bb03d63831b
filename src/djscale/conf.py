"""Every djscale setting, read, defaulted and validated in one place: ``djscale.conf``.

The effective configuration is the dict :func:`djscale.settings.from_topology` returns as
``DJSCALE_DERIVED`` deep-merged with the project's own ``DJSCALE``: the project wins key
by key and nested dicts are merged, so ``DJSCALE = {"HEALTH": {"TOKEN": "..."}}`` pasted
before or after ``globals().update(from_topology())`` keeps the topology's replication
groups. :func:`get` turns it into a frozen, typed :class:`DjscaleSettings` with one section
per component (``get().replication``, ``get().health``, ...), builds it once per process
and builds it again after Django's ``setting_changed`` signal names one of
:data:`WATCHED_SETTINGS` (tests override settings).

Each key's type, default and meaning is declared once, in the dataclasses below; the
reference in docs/settings-reference.md is generated from them
(``python -m djscale.conf --markdown``) and a unit test fails when it drifts.

Bad values are system check errors (``manage.py check``): ``djscale.E001`` for
``TRUSTED_PROXIES``, ``djscale.E002`` for ``HEALTH`` and ``PUBLIC_CACHE_PATHS``,
``djscale.E110`` for ``QUERIES`` and ``djscale.E120`` for every other key;
``djscale.W120`` names an unknown top-level key and ``djscale.W121`` a deprecated name
(``DJSCALE_SESSIONS``, ``DJSCALE_CACHE_WARMERS``, ``DJSCALE["SHARDS"]``, which still work).
At run time :func:`get` raises :class:`~djscale.errors.ConfigurationError` naming the
first bad key, so a component never runs on a half-read configuration.

Nothing else in djscale reads ``settings.DJSCALE`` or ``settings.DJSCALE_DERIVED``.
This module must not open connections.
"""

# ruff: noqa: RUF009  - setting() returns a dataclasses.Field, as field() does

from __future__ import annotations

import argparse
import copy
import dataclasses
import ipaddress
import re
import sys
import threading
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.core.signals import setting_changed

from djscale.errors import ConfigurationError
from djscale.topology import DEFAULT_SHARD_EPOCH_MS, REPLICA_POLICIES, ServiceSpec, ShardingSpec

__all__ = [
    "FALLBACKS",
    "MODES",
    "POLICIES",
    "WATCHED_SETTINGS",
    "BreakerSettings",
    "CacheSettings",
    "DeploymentSettings",
    "DjscaleSettings",
    "EventsSettings",
    "HealthSettings",
    "HttpSettings",
    "MetricsSettings",
    "MigrationsSettings",
    "Mode",
    "Problem",
    "QueriesSettings",
    "ReplicationGroup",
    "ReplicationSettings",
    "ServiceSettings",
    "SessionsSettings",
    "ShardingSettings",
    "build",
    "check_settings",
    "get",
    "markdown",
    "merge",
    "merged",
    "problems",
    "reset",
]

Mode = Literal["raise", "log", "off"]
MODES: tuple[Mode, ...] = ("raise", "log", "off")
Policy = Literal["random", "weighted", "least_lag"]
POLICIES: tuple[str, ...] = REPLICA_POLICIES
Fallback = Literal["primary", "raise"]
FALLBACKS: tuple[str, ...] = ("primary", "raise")
RedisMode = Literal["single", "cluster"]
ShardingMode = Literal["hash", "modulo"]

#: Settings whose change (``override_settings`` in tests) rebuilds the configuration.
WATCHED_SETTINGS = frozenset({"DJSCALE", "DJSCALE_DERIVED", "DATABASES", "DEBUG",
                              "DJSCALE_SESSIONS", "DJSCALE_CACHE_WARMERS"})

_SERVICE_DEFAULTS = ServiceSpec(name="", urls=())


@dataclass(frozen=True)
class _Context:
    """What a computed default may depend on."""

    debug: bool
    name: str
    values: Mapping[str, Any]


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, key: str | None = None,
            factory: Callable[[], Any] | None = None, shown: str | None = None,
            topology: bool = False, flat: bool = False, minimum: float | None = None,
            above: float | None = None, maximum: float | None = None,
            compute: Callable[[_Context], Any] | None = None,
            check: Callable[[Any], str | None] | None = None,
            internal: bool = False) -> Any:
    """A dataclass field for one key, with what the parser and the docs generator need.

    ``key`` is the dict key (default: the field name upper-cased); ``shown`` replaces the
    default in the docs; ``topology`` marks keys ``from_topology()`` fills; ``flat`` reads
    a section's keys from the enclosing dict; ``minimum``/``above``/``maximum`` bound
    numbers; ``compute`` gives the default when it depends on other values; ``check``
    returns a reason when a value is unusable; ``internal`` fields are filled by the
    builder, never read from settings.
    """
    meta = {"doc": doc, "key": key, "shown": shown, "topology": topology, "flat": flat,
            "minimum": minimum, "above": above, "maximum": maximum, "compute": compute,
            "check": check, "internal": internal}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------ checks of values


def _check_networks(entries: tuple[str, ...]) -> str | None:
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            return (f"{entry!r} is not an IP address or network (e.g. '10.0.0.5' or "
                    "'10.0.0.0/24')")
    return None


def _check_paths(entries: tuple[tuple[str, int], ...]) -> str | None:
    for pattern, max_age in entries:
        if max_age < 0:
            return f"max-age {max_age} of {pattern!r} must be >= 0 seconds"
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"{pattern!r} is not a regular expression ({exc})"
    return None


def _check_weights(weights: Mapping[str, float]) -> str | None:
    if any(w < 0 for w in weights.values()):
        return "weights must be numbers >= 0"
    return None


# ------------------------------------------------------------------ sections


@dataclass(frozen=True)
class ReplicationGroup:
    """One replication group: a primary alias and the aliases of its replicas."""

    name: str = setting("", "The group's name (its key in REPLICATION_GROUPS).",
                        internal=True)
    primary: str = setting("", "Alias of the group's primary in DATABASES.", topology=True,
                           shown="the group's name", compute=lambda c: c.name)
    replicas: tuple[str, ...] = setting((), "Aliases of the primary's streaming replicas.",
                                        topology=True)
    max_lag_seconds: float = setting(5.0, "A replica further behind (seconds) is skipped.",
                                     topology=True, minimum=0)
    max_lag_bytes: int = setting(16 * 1024 * 1024, "A replica further behind (WAL bytes) "
                                 "is skipped.", topology=True, minimum=0)
    policy: Policy = setting("random", "How a read picks among usable replicas.",
                             topology=True)
    fallback: Fallback = setting("primary", "With no usable replica: read the primary, or "
                                 "raise NoReplicaAvailable.")
    query_deadline_ms: int = setting(2000, "Deadline of one statement on the primary inside "
                                     "a request (djscale.db.deadline); past it the "
                                     "connection is abandoned and the request gets a 503. "
                                     "0: none.", topology=True, minimum=0)
    replica_query_deadline_ms: int = setting(500, "Deadline of one statement on a replica "
                                             "inside a request; past it the replica is "
                                             "marked down and a GET runs again elsewhere. "
                                             "0: none.", topology=True, minimum=0)
    replica_max_latency_ms: int = setting(250, "A replica whose probe query took longer "
                                          "than this in two rounds in a row is skipped "
                                          "until it answers in time. 0: never.",
                                          topology=True, minimum=0)
    weights: Mapping[str, float] = setting(doc="Replica alias -> weight under the "
                                           "'weighted' policy (1 when missing).",
                                           factory=dict, check=_check_weights)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The primary followed by the replicas."""
        return (self.primary, *self.replicas)

    def weight(self, alias: str) -> float:
        """Weight of a replica under the ``weighted`` policy (1.0 when not set)."""
        return float(self.weights.get(alias, 1.0))


@dataclass(frozen=True)
class ReplicationSettings:
    """Replication groups and the replica pool (docs/replicas.md)."""

    groups: Mapping[str, ReplicationGroup] = setting(
        doc="Replication groups by name.", key="REPLICATION_GROUPS", factory=dict,
        topology=True)
    refresh_seconds: float = setting(1.0, "How often the replica pool probes each replica.",
                                     key="REPLICA_REFRESH_SECONDS", above=0)
    consistency_cookie_age: int = setting(300, "Seconds a read-your-writes token is "
                                          "honoured.", key="CONSISTENCY_COOKIE_AGE", above=0)
    primary_for_unsafe_methods: bool = setting(
        True, "Reads of a request that is not GET, HEAD or OPTIONS go to the primary "
        "(ReplicaMiddleware), so a write request reads what it writes against as committed: "
        "no lost update, no reference refused by a lagging replica. use_replica() still "
        "reads replicas inside.", key="PRIMARY_FOR_UNSAFE_METHODS")
    by_alias: Mapping[str, ReplicationGroup] = setting(
        doc="Group of every primary and replica alias.", factory=dict, internal=True)

    def group_of(self, alias: str | None) -> ReplicationGroup | None:
        """The group a database alias (primary or replica) belongs to, or None."""
        return self.by_alias.get(alias) if alias is not None else None


@dataclass(frozen=True)
class ShardingSettings:
    """Physical shards, logical shards and ids (docs/sharding.md)."""

    aliases: tuple[str, ...] = setting((), "Aliases of the shard primaries in DATABASES.",
                                       topology=True)
    logical_shards: int = setting(ShardingSpec.logical_shards, "Number of logical shards "
                                  "(never change it once data exists).", topology=True,
                                  minimum=1)
    epoch_ms: int = setting(DEFAULT_SHARD_EPOCH_MS, "Custom epoch of the millisecond part "
                            "of 64-bit ids.", topology=True, minimum=0)
    mode: ShardingMode = setting(ShardingSpec.mode, "How a key maps to a logical shard.",
                                 topology=True)
    map_alias: str = setting("default", "Database holding the logical -> physical shard "
                             "map.", topology=True)
    map_ttl_seconds: float = setting(1.0, "How long a process keeps the shard map before "
                                     "reading it again.", topology=True, minimum=0)
    replicas: Mapping[str, tuple[str, ...]] = setting(
        doc="Replica aliases of each shard (from its replication group).", factory=dict,
        internal=True)

    def is_shard(self, alias: str) -> bool:
        """True when ``alias`` is a shard primary."""
        return alias in self.aliases


@dataclass(frozen=True)
class CacheSettings:
    """Redis behind the tiered cache, and cache warmers (docs/cache.md)."""

    redis_urls: tuple[str, ...] = setting((), "URLs of the Redis (or Redis Cluster nodes) "
                                          "of the topology.", key="REDIS_URLS", topology=True)
    redis_mode: RedisMode = setting("single", "'single' Redis or Redis 'cluster'.",
                                    key="REDIS_MODE", topology=True)
    warmers: tuple[str, ...] = setting((), "Modules imported by `manage.py warm_cache` so "
                                       "their @warmer functions register.",
                                       key="CACHE_WARMERS")


@dataclass(frozen=True)
class SessionsSettings:
    """Failover-safe session cache writes of ``djscale.sessions``."""

    replica_acks: int | None = setting(None, "Redis replicas that must hold a session write "
                                       "(None: 1 on a Redis Cluster, else 0).", minimum=0)
    ack_timeout: float = setting(0.1, "Seconds WAIT may block for those acks.", minimum=0)
    retry_for: float = setting(5.0, "Seconds to keep retrying a write during a Redis "
                               "failover.", minimum=0)


@dataclass(frozen=True)
class HealthSettings:
    """The /health/live and /health/ready endpoints (docs/edge.md)."""

    timeout: float = setting(1.0, "Deadline of every readiness check, in seconds.", above=0)
    cache_seconds: float = setting(1.0, "How long a readiness answer is reused.", minimum=0)
    token: str | None = setting(None, "Bearer token needed to see per-check details.")
    drain_file: str | None = setting(None, "While this file exists /health/ready answers 503 "
                                     "(default: $DJSCALE_STATE_DIR/drain/<service>).")
    check_replicas: bool = setting(True, "Report every replica and its lag (never 503).")
    check_broker: bool = setting(True, "PING CELERY_BROKER_URL (never 503).")


@dataclass(frozen=True)
class MetricsSettings:
    """The /metrics endpoint and query counting (docs/operations.md)."""

    token: str | None = setting(None, "Bearer token /metrics requires (None: open; keep it "
                                "off the public load balancer).", key="METRICS_TOKEN")
    query_metrics: bool = setting(True, "Count every query per database alias "
                                  "(djscale_db_queries_total).", key="QUERY_METRICS")


@dataclass(frozen=True)
class HttpSettings:
    """Forwarded headers and public caching (docs/edge.md)."""

    trusted_proxies: tuple[str, ...] = setting(
        (), "IP addresses or CIDR networks whose X-Forwarded-* headers are believed.",
        key="TRUSTED_PROXIES", topology=True, check=_check_networks)
    public_cache_paths: tuple[tuple[str, int], ...] = setting(
        (), "(regex on the path, max-age seconds) pairs whose anonymous GET responses may "
        "be cached publicly.", key="PUBLIC_CACHE_PATHS", check=_check_paths)


def _default_mode(c: _Context) -> Mode:
    return "raise" if c.debug else "log"


@dataclass(frozen=True)
class QueriesSettings:
    """N+1 detection and query budgets (docs/queries.md)."""

    n_plus_one: Mode = setting("log", "What a detected N+1 does.",
                               shown="'raise' if DEBUG else 'log'", compute=_default_mode)
    budget: Mode = setting("log", "What an exceeded query budget does.",
                           shown="'raise' if DEBUG else 'log'", compute=_default_mode)
    threshold: int = setting(3, "Same query shape from one line this many times is an N+1.",
                             minimum=2)
    sample_rate: float = setting(
        0.1, "Share of requests and tasks inspected for N+1.",
        shown="1.0 if N_PLUS_ONE is 'raise' else 0.1", minimum=0, maximum=1,
        compute=lambda c: 1.0 if c.values.get("n_plus_one") == "raise" else 0.1)
    budgets: Mapping[str, int] = setting(doc="URL name -> most queries one request may run.",
                                         factory=dict, minimum=0)
    ignore_paths: tuple[str, ...] = setting((), "More path prefixes skipped when finding "
                                            "the call site.")
    max_recorded: int = setting(500, "Most query shapes remembered per request.", minimum=1)


@dataclass(frozen=True)
class EventsSettings:
    """Outbox relay and consumers (docs/events.md)."""

    max_attempts: int = setting(5, "Delivery attempts of a consumer before the event is "
                                "dead-lettered.", minimum=1)
    retry_backoff: float = setting(1.0, "Base of the consumers' exponential back-off, "
                                   "seconds.", minimum=0)
    retry_backoff_max: float = setting(60.0, "Cap of that back-off, seconds.", minimum=0)
    redeliver_after: float = setting(10.0, "Seconds before an unconfirmed delivery is sent "
                                     "again.", above=0)
    redeliver_attempts: int = setting(5, "Times an unconfirmed delivery is sent again before "
                                      "it is given up.", minimum=0)


Purger = Literal["none", "varnish", "fastly", "cloudflare", "cloudfront"]
PurgeMode = Literal["hard", "soft"]


@dataclass(frozen=True)
class EdgeSettings:
    """Purging the edge cache (Varnish or a CDN) by tag when tagged models change
    (docs/edge.md)."""

    purger: Purger = setting("none", "Which edge the app servers purge.", topology=True)
    purge_mode: PurgeMode = setting("hard", "hard: gone at once; soft: stale, refetched "
                                    "on the next request (served once more).",
                                    topology=True)
    purge_urls: tuple[str, ...] = setting((), "Base URLs of every Varnish (empty: the local "
                                          "cluster's edge).", topology=True)
    service_id: str = setting("", "Fastly service id.", topology=True)
    zone_id: str = setting("", "Cloudflare zone id.", topology=True)
    distribution_id: str = setting("", "CloudFront distribution id.", topology=True)
    token_env: str = setting("", "Environment variable holding the Fastly or Cloudflare API "
                             "token.", topology=True)
    aws_key_id_env: str = setting("", "Environment variable holding the AWS access key id "
                                  "(CloudFront).", topology=True)
    aws_secret_env: str = setting("", "Environment variable holding the AWS secret access "
                                  "key (CloudFront).", topology=True)
    api_url: str = setting("", "The CDN API's base URL when not its public one.",
                           topology=True)
    batch_ms: int = setting(5, "Milliseconds a purge waits to gather more tags.",
                            topology=True, minimum=0)
    retries: int = setting(3, "Extra attempts of a failed purge (exponential back-off).",
                           topology=True, minimum=0)
    timeout: float = setting(5.0, "Seconds one purge request may take.", above=0)
    wait_for_replicas: float = setting(2.0, "Seconds a purge waits for the replicas to "
                                       "replay the write (0: do not wait), so the edge "
                                       "refetches fresh data.", minimum=0)
    caches: tuple[str, ...] = setting(("default",), "Cache aliases whose tagged entries are "
                                      "evicted with the edge's.")
    inline: bool = setting(True, "Purge in the request that committed, before it answers "
                           "(one attempt; retries, batching and the repurge in the "
                           "background): an update is visible at the edge once the write "
                           "answered. False, and outside requests: in the background "
                           "thread.")
    repurge_ms: int = setting(250, "Milliseconds after a purge when the same tags are "
                              "evicted and purged once more (0: never): a fetch that read "
                              "the old data before the first purge and stored it after is "
                              "gone then.", minimum=0)


@dataclass(frozen=True)
class MigrationsSettings:
    """Applying migrations without locking out traffic (docs/migrations.md)."""

    lock_timeout_ms: int = setting(2000, "PostgreSQL lock_timeout of each migration "
                                   "statement: a lock not granted by then fails the attempt "
                                   "instead of queueing every query of the table behind it. "
                                   "0: wait forever.", topology=True, minimum=0)
    attempts: int = setting(5, "Attempts of a migration that failed on lock_timeout "
                            "before migrate gives up.", minimum=1)
    retry_backoff: float = setting(1.0, "Seconds before the second attempt; doubled for "
                                   "each next one (with jitter).", minimum=0)
    retry_backoff_max: float = setting(30.0, "Cap of that back-off, seconds.", minimum=0)
    guard: bool = setting(True, "migrate refuses unapplied migrations with lock hazards "
                          "(djscale.W310-W318) unless --allow-unsafe or the migration's "
                          "djscale_allow_unsafe says otherwise.")
    backfill_batch_size: int = setting(1000, "Rows per transaction of djscale.db.backfill.",
                                       minimum=1)
    backfill_pause: float = setting(0.0, "Seconds djscale.db.backfill sleeps between "
                                    "batches (throttling).", minimum=0)


@dataclass(frozen=True)
class BreakerSettings:
    """A service client's circuit breaker."""

    failure_rate: float = setting(_SERVICE_DEFAULTS.breaker_failure_rate, "Failure rate "
                                  "that opens the breaker.", topology=True, minimum=0,
                                  maximum=1)
    minimum_calls: int = setting(_SERVICE_DEFAULTS.breaker_minimum_calls, "Calls in the "
                                 "window before the rate counts.", topology=True, minimum=1)
    window: float = setting(_SERVICE_DEFAULTS.breaker_window, "Seconds of calls the rate is "
                            "measured over.", topology=True, above=0)
    reset: float = setting(_SERVICE_DEFAULTS.breaker_reset, "Seconds before an open breaker "
                           "lets a trial call through.", topology=True, minimum=0)


@dataclass(frozen=True)
class ServiceSettings:
    """One upstream service of ``service_client(name)`` (docs/services.md)."""

    name: str = setting("", "The service's name (its key in SERVICES).", internal=True)
    urls: tuple[str, ...] = setting((), "Base URLs of the service's instances.",
                                    topology=True)
    timeout: float = setting(_SERVICE_DEFAULTS.timeout, "Budget of one call with its "
                             "retries, seconds.", topology=True, above=0)
    connect_timeout: float = setting(_SERVICE_DEFAULTS.connect_timeout, "Connect timeout "
                                     "of one attempt, seconds.", topology=True, above=0)
    retries: int = setting(_SERVICE_DEFAULTS.retries, "Extra attempts of idempotent "
                           "requests.", topology=True, minimum=0)
    breaker: BreakerSettings = setting(doc="Circuit breaker.", factory=BreakerSettings,
                                       topology=True)

    def spec(self) -> ServiceSpec:
        """The same service as the topology's :class:`~djscale.topology.ServiceSpec`."""
        return ServiceSpec(
            name=self.name, urls=self.urls, timeout=self.timeout,
            connect_timeout=self.connect_timeout, retries=self.retries,
            breaker_failure_rate=self.breaker.failure_rate,
            breaker_minimum_calls=self.breaker.minimum_calls,
            breaker_window=self.breaker.window, breaker_reset=self.breaker.reset)


@dataclass(frozen=True)
class DeploymentSettings:
    """What the topology says about the deployment as a whole."""

    topology: str | None = setting(None, "The topology file the settings came from "
                                   "(informational).", topology=True)
    app_servers: int = setting(1, "Number of app servers (checks W001, W002, W100).",
                               topology=True, minimum=1)
    pgbouncer: str | None = setting(None, "PgBouncer pool mode when the databases are "
                                    "reached through it.", topology=True)
    celery_app: str = setting("", "The project's Celery app as for celery -A (the relay "
                              "publishes through it).", topology=True)
    shared_media_root: bool = setting(False, "MEDIA_ROOT is a mount every app server shares "
                                      "(silences W100).")


@dataclass(frozen=True)
class DjscaleSettings:
    """The whole effective djscale configuration, one section per component."""

    replication: ReplicationSettings = setting(doc="", factory=ReplicationSettings, flat=True)
    sharding: ShardingSettings = setting(doc="", factory=ShardingSettings, key="SHARDING",
                                         topology=True)
    cache: CacheSettings = setting(doc="", factory=CacheSettings, flat=True)
    sessions: SessionsSettings = setting(doc="", factory=SessionsSettings, key="SESSIONS")
    health: HealthSettings = setting(doc="", factory=HealthSettings, key="HEALTH")
    metrics: MetricsSettings = setting(doc="", factory=MetricsSettings, flat=True)
    http: HttpSettings = setting(doc="HTTP", factory=HttpSettings, flat=True)
    queries: QueriesSettings = setting(doc="", factory=QueriesSettings, key="QUERIES")
    events: EventsSettings = setting(doc="", factory=EventsSettings, key="EVENTS")
    migrations: MigrationsSettings = setting(doc="", factory=MigrationsSettings,
                                             key="MIGRATIONS")
    edge: EdgeSettings = setting(doc="", factory=EdgeSettings, key="EDGE", topology=True)
    services: Mapping[str, ServiceSettings] = setting(doc="Services",
                                                      factory=dict, key="SERVICES",
                                                      topology=True)
    deployment: DeploymentSettings = setting(doc="", factory=DeploymentSettings, flat=True)


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Problem:
    """One finding about the settings, reported as a system check message."""

    id: str
    message: str
    error: bool = True

    def check_message(self) -> CheckMessage:
        """The Django system check message of this problem."""
        hint = "See docs/settings-reference.md for every key, its type and default."
        if self.error:
            return Error(self.message, hint=hint, id=self.id)
        return CheckWarning(self.message, hint=hint, id=self.id)


_IDS = {"TRUSTED_PROXIES": "djscale.E001", "HEALTH": "djscale.E002",
        "PUBLIC_CACHE_PATHS": "djscale.E002", "QUERIES": "djscale.E110"}


def _key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key") or f.name.upper())


def _where(path: Sequence[str]) -> str:
    return "DJSCALE" + "".join(f'["{p}"]' for p in path)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _Parser:
    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.problems: list[Problem] = []

    def fail(self, path: Sequence[str], text: str) -> None:
        self.problems.append(Problem(_IDS.get(path[0], "djscale.E120") if path else
                                     "djscale.E120", text))

    def section(self, cls: type[Any], raw: Mapping[str, Any], path: tuple[str, ...], *,
                name: str = "", top: bool = False) -> Any:
        hints = _hints(cls)
        values: dict[str, Any] = {}
        known: set[str] = set()
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                if f.name == "name":
                    values["name"] = name
                continue
            tp = hints[f.name]
            if f.metadata.get("flat"):
                values[f.name] = self.section(tp, raw, path, top=True)
                known.update(_keys(tp))
                continue
            key = _key(f)
            known.add(key)
            if key in raw:
                value = self.value(raw[key], tp, f, (*path, key))
                if value is not _BAD:
                    values[f.name] = value
                    continue
            if _is_section(tp):  # absent: its own computed defaults still apply
                values[f.name] = self.section(tp, {}, (*path, key))
                continue
            compute = f.metadata.get("compute")
            if compute is not None:
                values[f.name] = compute(_Context(self.debug, name, values))
        if not top:
            unknown = sorted(k for k in raw if k not in known)
            if unknown:
                self.fail(path, f"{_where(path)} has unknown key {unknown[0]!r}; allowed: "
                          + ", ".join(sorted(known)))
        return cls(**values)

    def value(self, value: Any, tp: Any, f: dataclasses.Field[Any] | None,
              path: tuple[str, ...]) -> Any:
        where = _where(path)
        try:
            result = _convert(value, tp, self, path)
        except _Invalid as exc:
            self.fail(path, f"{where} = {value!r} is invalid: expected {exc}")
            return _BAD
        if result is _BAD:
            return _BAD
        meta: Mapping[str, Any] = f.metadata if f is not None else {}
        bounds = _bounds(meta)
        numbers = [result] if isinstance(result, int | float) and not isinstance(
            result, bool) else (list(result.values()) if isinstance(result, Mapping) and all(
                isinstance(v, int | float) for v in result.values()) else [])
        if bounds and any(not _within(n, meta) for n in numbers):
            self.fail(path, f"{where} = {value!r} is invalid: expected {bounds}")
            return _BAD
        check = meta.get("check")
        reason = check(result) if check is not None else None
        if reason:
            self.fail(path, f"{where} = {value!r} is invalid: {reason}")
            return _BAD
        return result


class _Invalid(Exception):
    """A value of the wrong shape; the message says what was expected."""


_BAD = object()


def _keys(cls: type[Any]) -> set[str]:
    found: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.metadata.get("flat"):
            found |= _keys(_hints(cls)[f.name])
        else:
            found.add(_key(f))
    return found


def _bounds(meta: Mapping[str, Any]) -> str:
    low, above, high = meta.get("minimum"), meta.get("above"), meta.get("maximum")
    if low is not None and high is not None:
        return f"a number between {low:g} and {high:g}"
    if above is not None:
        return f"a number > {above:g}"
    if low is not None:
        return f"a number >= {low:g}"
    return ""


def _within(n: float, meta: Mapping[str, Any]) -> bool:
    low, above, high = meta.get("minimum"), meta.get("above"), meta.get("maximum")
    return not ((low is not None and n < low) or (above is not None and n <= above)
                or (high is not None and n > high))


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise _Invalid("an integer" if kind is int else "a number")
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise _Invalid("an integer" if kind is int else "a number") from None
    if kind is int:
        if not isinstance(value, int):
            raise _Invalid("an integer")
        return value
    if not isinstance(value, int | float):
        raise _Invalid("a number")
    return float(value)


def _convert(value: Any, tp: Any, parser: _Parser, path: tuple[str, ...]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid("True or False")
        return value
    if tp is int or tp is float:
        return _number(value, tp)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid("a string")
        return value
    if origin is Literal:
        if value not in args:
            raise _Invalid("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        [other] = [a for a in args if a is not type(None)]
        return _convert(value, other, parser, path)
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _Invalid("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], parser, path) for v in value)
        if len(value) != len(args):
            raise _Invalid(f"a list of {len(args)} items")
        return tuple(_convert(v, a, parser, path) for v, a in zip(value, args, strict=True))
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise _Invalid("a dict")
        item = args[1]
        out: dict[str, Any] = {}
        for k, v in value.items():
            if _is_section(item):
                if not isinstance(v, Mapping):
                    parser.fail((*path, str(k)), f"{_where((*path, str(k)))} = {v!r} is "
                                "invalid: expected a dict")
                    return _BAD
                out[str(k)] = parser.section(item, v, (*path, str(k)), name=str(k))
            else:
                out[str(k)] = _convert(v, item, parser, path)
        return types.MappingProxyType(out)
    if _is_section(tp):
        if not isinstance(value, Mapping):
            raise _Invalid("a dict")
        return parser.section(tp, value, path)
    raise TypeError(f"djscale.conf cannot read a {tp!r}")  # a bug in this module


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` deep-merged with ``override``: dicts merge key by key, ``override`` wins."""
    out = {k: copy.deepcopy(v) for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _legacy(raw: dict[str, Any], legacy: Mapping[str, Any]) -> list[Problem]:
    found = []
    for name, key, target in (("DJSCALE_SESSIONS", "SESSIONS", 'DJSCALE["SESSIONS"]'),
                              ("DJSCALE_CACHE_WARMERS", "CACHE_WARMERS",
                               'DJSCALE["CACHE_WARMERS"]')):
        if legacy.get(name) is not None:
            found.append(Problem("djscale.W121", f"settings.{name} is deprecated: move it "
                                 f"to {target}", error=False))
            raw[key] = merge({key: legacy[name]}, {key: raw[key]})[key] if key in raw \
                else legacy[name]
    if "SHARDS" in raw:
        shards = raw.pop("SHARDS")
        found.append(Problem("djscale.W121", 'DJSCALE["SHARDS"] is deprecated: use '
                             'DJSCALE["SHARDING"]["ALIASES"]', error=False))
        sharding = raw.get("SHARDING")
        if isinstance(sharding, Mapping) and "ALIASES" not in sharding:
            raw["SHARDING"] = {**sharding, "ALIASES": shards}
        elif sharding is None:
            raw["SHARDING"] = {"ALIASES": shards}
    return found


def build(user: Mapping[str, Any] | None = None, derived: Mapping[str, Any] | None = None,
          *, databases: Mapping[str, Any] | None = None, debug: bool = False,
          legacy: Mapping[str, Any] | None = None) -> tuple[DjscaleSettings, list[Problem]]:
    """The configuration from these dicts, and every problem found (pure: no settings).

    ``user`` is ``settings.DJSCALE``, ``derived`` ``settings.DJSCALE_DERIVED``;
    ``databases`` (``settings.DATABASES``) lets the aliases be checked; ``legacy`` holds
    deprecated top-level settings (``DJSCALE_SESSIONS``, ``DJSCALE_CACHE_WARMERS``).
    Where a value is unusable the default is used and a :class:`Problem` says so.
    """
    parser = _Parser(debug)
    for name, given in (("DJSCALE", user), ("DJSCALE_DERIVED", derived)):
        if given is not None and not isinstance(given, Mapping):
            parser.problems.append(Problem("djscale.E120", f"settings.{name} = {given!r} is "
                                           "invalid: expected a dict"))
    raw = merge(derived if isinstance(derived, Mapping) else {},
                user if isinstance(user, Mapping) else {})
    parser.problems.extend(_legacy(raw, legacy or {}))
    result: DjscaleSettings = parser.section(DjscaleSettings, raw, (), top=True)
    unknown = sorted(set(raw) - _keys(DjscaleSettings))
    for key in unknown:
        parser.problems.append(Problem("djscale.W120", f"{_where((key,))} is not a djscale "
                                       "setting (misspelt?); it is ignored", error=False))
    result = _link(result, parser, databases)
    return result, parser.problems


def _link(conf: DjscaleSettings, parser: _Parser,
          databases: Mapping[str, Any] | None) -> DjscaleSettings:
    """Cross-key checks and the lookups computed from several keys."""
    groups = conf.replication.groups
    if databases is not None:
        for name, group in groups.items():
            for alias in group.aliases:
                if alias not in databases:
                    parser.fail(("REPLICATION_GROUPS",),
                                f"{_where(('REPLICATION_GROUPS', name))} names database alias "
                                f"{alias!r}, which is not in settings.DATABASES; add it to "
                                "DATABASES or remove it from the group")
        for alias in conf.sharding.aliases:
            if alias not in databases:
                parser.fail(("SHARDING",), f"{_where(('SHARDING', 'ALIASES'))} names "
                            f"{alias!r}, which is not in settings.DATABASES")
    for name, service in conf.services.items():
        if not service.urls:
            parser.fail(("SERVICES",), f"{_where(('SERVICES', name, 'URLS'))} is missing or "
                        "empty: a service needs at least one URL")
    by_alias: dict[str, ReplicationGroup] = {}
    for group in groups.values():
        for alias in group.aliases:
            by_alias.setdefault(alias, group)
    replication = dataclasses.replace(conf.replication,
                                      by_alias=types.MappingProxyType(by_alias))
    sharding = dataclasses.replace(conf.sharding, replicas=types.MappingProxyType({
        a: groups[a].replicas if a in groups else () for a in conf.sharding.aliases}))
    return dataclasses.replace(conf, replication=replication, sharding=sharding)


# ------------------------------------------------------------------ the process's view


@dataclass(frozen=True)
class _State:
    settings: DjscaleSettings
    problems: tuple[Problem, ...]
    raw: Mapping[str, Any]
    error: str | None  # what get() raises: the first error, and how many more there are


_lock = threading.Lock()
_state: _State | None = None


def _load() -> _State:
    global _state
    from django.conf import settings as django_settings

    with _lock:
        if _state is None:
            user = getattr(django_settings, "DJSCALE", None)
            derived = getattr(django_settings, "DJSCALE_DERIVED", None)
            legacy = {name: getattr(django_settings, name, None)
                      for name in ("DJSCALE_SESSIONS", "DJSCALE_CACHE_WARMERS")}
            built, found = build(user, derived, databases=django_settings.DATABASES,
                                 debug=bool(django_settings.DEBUG), legacy=legacy)
            raw = merge(derived if isinstance(derived, Mapping) else {},
                        user if isinstance(user, Mapping) else {})
            errors = [p.message for p in found if p.error]
            error = None if not errors else errors[0] + (
                f" (and {len(errors) - 1} more problem(s): manage.py check lists them)"
                if len(errors) > 1 else "")
            _state = _State(built, tuple(found), raw, error)
        return _state


def get(*, validate: bool = True) -> DjscaleSettings:
    """The effective djscale configuration of this process.

    Raise :class:`~djscale.errors.ConfigurationError` naming the first bad key; with
    ``validate=False`` (for system checks) unusable values are replaced by defaults.
    """
    state = _state if _state is not None else _load()
    if validate and state.error is not None:
        raise ConfigurationError(state.error)
    return state.settings


def problems() -> tuple[Problem, ...]:
    """Every problem of the current settings (errors and warnings)."""
    return (_state if _state is not None else _load()).problems


def merged() -> dict[str, Any]:
    """A copy of the effective ``DJSCALE`` dict (``DJSCALE_DERIVED`` merged with ``DJSCALE``)."""
    return copy.deepcopy(dict((_state if _state is not None else _load()).raw))


def reset() -> None:
    """Forget the configuration (it is built again on next use)."""
    global _state
    with _lock:
        _state = None


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="djscale.conf")


@register("djscale")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001/E002/E110/E120/W120/W121: every djscale setting is usable."""
    return [p.check_message() for p in problems()]


# ------------------------------------------------------------------ reference docs


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (bool, int, float, str):
        return str(tp.__name__)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is types.UnionType or origin is typing.Union:
        return " \\| ".join("None" if a is type(None) else _type_text(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_text(args[0])}"
        return "(" + ", ".join(_type_text(a) for a in args) + ")"
    if origin is Mapping:
        return f"dict of {_type_text(args[0])} -> {_type_text(args[1])}"
    if _is_section(tp):
        return "dict (below)"
    return str(tp)


def _plain(value: Any) -> Any:
    """Settings-dict form of a default: lists for tuples, dicts for mappings."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("shown"):
        return str(f.metadata["shown"])
    if f.default is not dataclasses.MISSING:
        return repr(_plain(f.default))
    if f.default_factory is not dataclasses.MISSING:
        made = f.default_factory()
        return "(below)" if _is_section(type(made)) else repr(_plain(made))
    return "required"


def _rows(cls: type[Any], path: tuple[str, ...]) -> list[tuple[str, dataclasses.Field[Any],
                                                                Any]]:
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.metadata.get("flat"):
            rows.extend(_rows(hints[f.name], path))
        else:
            rows.append((_where((*path, _key(f))), f, hints[f.name]))
    return rows


def _table(cls: type[Any], path: tuple[str, ...], section: str) -> list[str]:
    doc = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")
    title = f"{section}: `{_where(path)}`" if path else section
    lines = [f"## {title}", "", doc, "",
             "| Key | Type | Default | Topology | Meaning |",
             "|---|---|---|---|---|"]
    subs: list[tuple[type[Any], tuple[str, ...]]] = []
    for where, f, tp in _rows(cls, path):
        lines.append(f"| `{where}` | {_type_text(tp)} | `{_default_text(f)}` | "
                     f"{'yes' if f.metadata.get('topology') else ''} | "
                     f"{f.metadata.get('doc', '')} |")
        inner = typing.get_args(tp)[1] if typing.get_origin(tp) is Mapping else tp
        if _is_section(inner):
            subs.append((inner, (*path, _key(f)) + (("<name>",) if inner is not tp else ())))
    lines.append("")
    for inner, sub_path in subs:
        lines.extend(_table(inner, sub_path, section))
    return lines


def markdown() -> str:
    """docs/settings-reference.md: every ``DJSCALE`` key, its type, default and meaning."""
    lines = [
        "# Settings reference (`DJSCALE`)",
        "",
        "<!-- Generated from src/djscale/conf.py by `python -m djscale.conf --markdown"
        " --output docs/settings-reference.md`; do not edit by hand. -->",
        "",
        "`from_topology()` writes the keys marked *Topology* into `DJSCALE_DERIVED`; the "
        "project's own `DJSCALE` is merged over it key by key (nested dicts merge, the "
        "project wins), before or after `globals().update(from_topology())` alike. "
        "Every other key takes its default unless `DJSCALE` sets it. Bad values are "
        "reported by `manage.py check` (djscale.E001 trusted proxies, djscale.E002 health "
        "and public cache paths, djscale.E110 queries, djscale.E120 any other key; "
        "djscale.W120 an unknown key, djscale.W121 a deprecated name). Components read "
        "them through `djscale.conf.get()`.",
        "",
        "Deprecated names that still work: `settings.DJSCALE_SESSIONS` (now "
        "`DJSCALE[\"SESSIONS\"]`), `settings.DJSCALE_CACHE_WARMERS` (now "
        "`DJSCALE[\"CACHE_WARMERS\"]`), `DJSCALE[\"SHARDS\"]` (now "
        "`DJSCALE[\"SHARDING\"][\"ALIASES\"]`).",
        "",
    ]
    hints = _hints(DjscaleSettings)
    for f in dataclasses.fields(DjscaleSettings):
        tp = hints[f.name]
        title = f.metadata.get("doc") or f.name.capitalize()
        if f.metadata.get("flat"):
            lines.extend(_table(tp, (), title))
        elif typing.get_origin(tp) is Mapping:
            lines.extend(_table(typing.get_args(tp)[1], (_key(f), "<name>"), title))
        else:
            lines.extend(_table(tp, (_key(f),), title))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m djscale.conf --markdown [--output FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m djscale.conf",
                                     description="djscale settings reference")
    parser.add_argument("--markdown", action="store_true", required=True,
                        help="print the reference of every DJSCALE key as Markdown")
    parser.add_argument("--output", type=Path, help="write it to this file instead")
    args = parser.parse_args(argv)
    text = markdown()
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
