"""Parse and validate ``djscale.toml`` into frozen dataclasses.

This module owns the shape of the topology file and nothing else: it does not choose
ports, start processes or build Django settings. Every other part of djscale reads the
:class:`Topology` returned by :func:`load` (or :func:`parse`) instead of the file.

An invalid file raises :class:`~djscale.errors.TopologyError` whose message names the key
(``lb.method``), the bad value and what is allowed, on one line.

Example::

    [project]
    name = "demo"
    pythonpath = "examples/demo"
    settings = "demo.settings"
    wsgi = "demo.wsgi:application"

    [postgres]
    database = "app"
    replicas = 2

    [[shards]]
    name = "shard1"
    replicas = 1

    [redis]
    mode = "single"            # or "cluster" with masters >= 3

    [app]
    servers = 2
    workers = 2
    weights = [1, 1]

    [lb]
    kind = "nginx"             # or "haproxy"
    method = "round_robin"     # least_conn, ip_hash

    [celery]
    workers = 1
    app = "demo.celery:app"

    [edge]                     # a shared cache in front of the load balancer
    kind = "varnish"           # the local cluster runs Varnish (xkey); or "none"
    public_paths = ["^/catalog/"]   # cookies dropped here (the app declared them public)
    grace_seconds = 300        # stale public pages served while the app is down
    purger = "varnish"         # or "fastly", "cloudflare", "cloudfront", "none"

    [services.users]           # upstreams that clients and the gateway may call
    urls = ["http://127.0.0.1:8101"]
    timeout = 2.0              # budget of one call, retries included (seconds)
    retries = 2                # extra attempts, idempotent requests only

    [gateway]
    rate_limit = 100           # requests per client per rate_window; 0 = off
    [[gateway.routes]]
    prefix = "/api/users/"
    service = "users"
    [[gateway.compositions]]
    path = "/api/profile/{user_id}"
    parts = { user = "users:/users/{user_id}", orders = "orders:/orders/?user={user_id}" }

    [sharding]
    logical_shards = 1024      # fixed for the life of the data (at most 8192)
    epoch = "2025-01-01"       # custom epoch of the 64-bit ids (a past UTC date/datetime)
    mode = "hash"              # or "modulo" (key % logical_shards, integer keys)

Several machines: name them in ``[hosts]`` and place services on them by name; any
``host`` may still be a plain address. Names are resolved here, so every other module
sees addresses only (``Topology.host_at(address)`` finds the machine again)::

    [hosts.db]
    address = "10.77.0.2"
    netns = "djs-db"           # local cluster only: run this host's processes in a netns
    [hosts.app1]
    address = "10.77.0.3"

    [postgres]
    host = "db"
    replica_hosts = ["db2"]    # one per replica (default: the primary's host)
    [app]
    hosts = ["app1", "app2"]   # one per app server (default: app.host)
    [celery]
    hosts = ["app2"]           # one per worker (default: celery.host)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from djscale.errors import TopologyError

__all__ = [
    "AUTO",
    "AUTOSCALE_METRICS",
    "AppSpec",
    "AutoscaleSpec",
    "CelerySpec",
    "CompositionSpec",
    "DatabaseGroup",
    "EdgeSpec",
    "GatewaySpec",
    "HostSpec",
    "KubernetesSpec",
    "LoadBalancerSpec",
    "PgBouncerSpec",
    "Port",
    "ProjectSpec",
    "RedisSpec",
    "RouteSpec",
    "ServiceSpec",
    "ShardingSpec",
    "Topology",
    "load",
    "merge_layers",
    "parse",
    "profile_path",
    "record_keys",
]

AUTO: Literal["auto"] = "auto"
"""Port value meaning "choose a free port when the cluster starts"."""

Port = int | Literal["auto"]

LB_KINDS = ("nginx", "haproxy")
LB_METHODS = ("round_robin", "least_conn", "ip_hash")
REDIS_MODES = ("single", "cluster")
REPLICA_POLICIES = ("random", "weighted", "least_lag")
HA_MODES = ("none", "patroni")
"""Values of ``[postgres] ha``: no failover manager, or Patroni + etcd."""
SHARDING_MODES = ("hash", "modulo")
MAX_LOGICAL_SHARDS = 8192  # 13 bits of the 64-bit id
DEFAULT_SHARD_EPOCH_MS = 1735689600000  # 2025-01-01T00:00:00Z
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:\-]+$")
_HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,30}$")
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~\-/]*)?$")
_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._~\-/]*$")
_CPATH_RE = re.compile(r"^/[A-Za-z0-9._~\-/{}]*$")
_TEMPLATE_RE = re.compile(r"^/[A-Za-z0-9._~\-/{}?=&]*$")
_PLACEHOLDER_RE = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")

T = TypeVar("T")


@dataclass(frozen=True)
class HostSpec:
    """A machine of a multi-host topology (``[hosts.<name>]``).

    ``netns`` only matters to the local cluster: when set, the processes placed on this
    host run inside that Linux network namespace (made beforehand, e.g. by
    :mod:`djscale.testing.netns`); a real deployment leaves it empty.
    """

    name: str
    address: str
    netns: str = ""


@dataclass(frozen=True)
class ProjectSpec:
    """The Django project the app servers and Celery workers run."""

    name: str = "djscale"
    pythonpath: str = "."
    settings: str = "project.settings"
    wsgi: str = "project.wsgi:application"


@dataclass(frozen=True)
class DatabaseGroup:
    """A PostgreSQL primary and its streaming replicas (one replication group).

    ``name`` is the Django alias of the primary (``default`` for the main group); replica
    aliases are ``{name}_replica{i}`` for ``i`` in ``1..replicas``.
    """

    name: str
    database: str = "app"
    user: str = "djscale"
    host: str = "127.0.0.1"
    port: Port = AUTO
    replicas: int = 0
    replica_ports: tuple[Port, ...] = ()
    replica_hosts: tuple[str, ...] = ()
    max_lag_seconds: float = 5.0
    max_lag_bytes: int = 16 * 1024 * 1024
    replica_policy: str = "random"
    conn_max_age: int = 60
    pool: bool = False
    query_deadline_ms: int = 2000
    """Application-side deadline of one statement on the primary, in a request (0: none)."""
    replica_query_deadline_ms: int = 500
    """The same on a replica; past it the replica is marked down and the read retried."""
    replica_max_latency_ms: int = 250
    """A replica whose probe answered slower than this twice in a row gets no reads (0: never)."""
    keepalives_idle: int = 10
    """libpq TCP keepalives: seconds idle before the first probe (0: keepalives off)."""
    migration_lock_timeout_ms: int = 2000
    """lock_timeout of each statement djscale's migrate runs (main [postgres] only; 0: none)."""
    keepalives_interval: int = 5
    keepalives_count: int = 3
    tcp_user_timeout_ms: int = 10000
    """libpq ``tcp_user_timeout``: unacknowledged data gives up after this (0: kernel's)."""
    password_env: str = ""
    """Environment variable holding the password (never the password itself)."""
    password_file: str = ""
    """File holding the password (e.g. a mounted secret); trailing newline ignored."""
    sslmode: str = ""
    """libpq ``sslmode`` (empty: libpq's default, ``prefer``)."""
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""
    options: tuple[tuple[str, str | int | float | bool], ...] = ()
    """Other libpq connection parameters (``application_name``, ``keepalives``, ...)."""
    enabled: bool = True
    """False (main group only): djscale leaves the project's own DATABASES alone."""
    ha: str = "none"
    """``"patroni"``: Patroni + etcd elect the primary and fail over (docs/ha.md)."""
    synchronous: bool = False
    """With ``ha``: Patroni's strict synchronous mode (no acknowledged commit lost)."""
    ha_ttl: int = 20
    """Patroni ``ttl``: seconds the leader key lives without renewal (failover bound)."""
    ha_loop_wait: int = 1
    """Patroni ``loop_wait``: seconds between two runs of its HA loop."""
    ha_retry_timeout: int = 5
    """Patroni ``retry_timeout``: seconds the DCS and PostgreSQL operations are retried."""
    maximum_lag_on_failover: int = 1024 * 1024
    """Patroni: a replica further behind (WAL bytes) is never promoted (asynchronous)."""

    @property
    def replica_aliases(self) -> tuple[str, ...]:
        """Django aliases of this group's replicas, in order."""
        return tuple(f"{self.name}_replica{i}" for i in range(1, self.replicas + 1))

    @property
    def aliases(self) -> tuple[str, ...]:
        """The primary's alias followed by the replicas' aliases."""
        return (self.name, *self.replica_aliases)

    def replica_host(self, index: int) -> str:
        """Address of replica ``index`` (0-based): its ``replica_hosts`` entry or ``host``."""
        return self.replica_hosts[index] if index < len(self.replica_hosts) else self.host


@dataclass(frozen=True)
class RedisSpec:
    """Redis: one node, or a Redis Cluster of ``masters`` masters with replicas each."""

    mode: str = "single"
    host: str = "127.0.0.1"
    port: Port = AUTO
    masters: int = 3
    replicas_per_master: int = 1
    addresses: tuple[tuple[str, int], ...] = ()
    """An existing Redis Cluster's nodes (``host:port`` each); empty: the local nodes."""
    tls: bool = False
    """Connect with TLS (``rediss://``)."""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    """Redis ACL user (empty: the default user)."""
    password_env: str = ""
    password_file: str = ""
    broker_host: str = ""
    """Address of the Celery broker's Redis in cluster mode (empty: ``host``)."""
    broker_port: Port = AUTO

    @property
    def nodes(self) -> int:
        """How many redis-server processes this spec needs."""
        if self.mode == "single":
            return 1
        return self.masters * (1 + self.replicas_per_master)


AUTOSCALE_METRICS = ("latency", "cpu")
"""What the autoscaler follows: p95 request latency (ms) or CPU (% of the app servers' cores)."""


@dataclass(frozen=True)
class AutoscaleSpec:
    """``[app] autoscale``: how many app servers run, from live load.

    The local cluster's autoscaler (:mod:`djscale.cluster.autoscale`) and the Kubernetes
    HorizontalPodAutoscaler (:mod:`djscale.deploy.kubernetes`) follow the same policy:
    ``desired = ceil(servers * observed / target)`` (Kubernetes' formula, within a 10 %
    tolerance), between ``min`` and ``max``; a scale-up acts at once, a scale-down removes
    one server at a time, only after the metric stayed low for ``cooldown`` seconds, and
    no change follows another within ``cooldown`` seconds.
    """

    min: int = 1
    max: int = 4
    metric: str = "latency"
    """``latency``: p95 of ``djscale_http_request_duration_seconds``; ``cpu``: CPU use."""
    target: float = 250.0
    """p95 in milliseconds (``latency``) or percent of one core per worker (``cpu``)."""
    cooldown: float = 30.0
    """Seconds between two scaling actions, and that the metric must stay low to scale in."""
    interval: float = 2.0
    """Seconds between two measurements."""
    window: float = 10.0
    """Seconds of requests one p95 / CPU figure covers (the last measurements merged)."""


@dataclass(frozen=True)
class AppSpec:
    """Stateless gunicorn app servers."""

    servers: int = 2
    workers: int = 2
    threads: int = 1
    host: str = "127.0.0.1"
    ports: tuple[Port, ...] = ()
    weights: tuple[int, ...] = ()
    timeout: int = 30
    hosts: tuple[str, ...] = ()
    autoscale: AutoscaleSpec | None = None
    """Set by ``autoscale = {...}``: the server count follows the load (see there)."""

    def weight(self, index: int) -> int:
        """Load-balancer weight of app server ``index`` (0-based); 1 when unset."""
        return self.weights[index] if index < len(self.weights) else 1

    def port(self, index: int) -> Port:
        """Configured port of app server ``index`` (0-based); ``auto`` when unset."""
        return self.ports[index] if index < len(self.ports) else AUTO

    def host_of(self, index: int) -> str:
        """Address of app server ``index`` (0-based): its ``hosts`` entry or ``host``."""
        return self.hosts[index] if index < len(self.hosts) else self.host


@dataclass(frozen=True)
class LoadBalancerSpec:
    """The load balancer in front of the app servers."""

    kind: str = "nginx"
    method: str = "round_robin"
    host: str = "127.0.0.1"
    port: Port = AUTO
    max_fails: int = 2
    fail_timeout: int = 5
    health_check_interval_ms: int = 1000
    slowstart_seconds: int = 5


EDGE_KINDS = ("none", "varnish")
PURGERS = ("none", "varnish", "fastly", "cloudflare", "cloudfront")
PURGE_MODES = ("hard", "soft")


@dataclass(frozen=True)
class EdgeSpec:
    """The shared cache in front of the load balancer, and how its pages are purged.

    ``kind = "varnish"``: the local cluster runs Varnish (VCL from
    :mod:`djscale.cluster.varnish`); ``purger`` says which edge the app servers purge by
    tag when tagged models change (a CDN in production, the local Varnish in rehearsal).
    """

    kind: str = "none"
    host: str = "127.0.0.1"
    port: Port = AUTO
    public_paths: tuple[str, ...] = ()
    """Regexes of paths the app declared public: their non-session cookies are dropped."""
    session_cookies: tuple[str, ...] = ("sessionid",)
    """Cookies that make a request personal (never served from or stored in the cache)."""
    grace_seconds: int = 300
    memory_mb: int = 256
    probe_interval_ms: int = 1000
    threads_min: int = 50
    purge_from: tuple[str, ...] = ("127.0.0.1", "::1")
    """Addresses (or CIDR networks) allowed to send PURGE to the Varnish edge."""
    purger: str = "none"
    purge_mode: str = "hard"
    purge_urls: tuple[str, ...] = ()
    """Varnish purger: base URLs of every Varnish (empty: the local cluster's edge)."""
    service_id: str = ""
    zone_id: str = ""
    distribution_id: str = ""
    token_env: str = ""
    aws_key_id_env: str = ""
    aws_secret_env: str = ""
    api_url: str = ""
    """The CDN's API base URL when not its public one (a proxy, a test server)."""
    batch_ms: int = 5
    retries: int = 3

    @property
    def enabled(self) -> bool:
        """True when the local cluster runs an edge cache."""
        return self.kind != "none"


@dataclass(frozen=True)
class CelerySpec:
    """Celery workers (the broker is the topology's Redis)."""

    workers: int = 0
    concurrency: int = 2
    app: str = ""
    queues: tuple[str, ...] = ("celery",)
    relay: bool = False
    """Run the transactional-outbox relay (``django-admin events_relay``) as a service."""
    broker: str = ""
    """Broker URL when it is not this topology's Redis (e.g. an event bus shared by services)."""
    host: str = "127.0.0.1"
    """Where the workers and the relay run (they listen on no port)."""
    hosts: tuple[str, ...] = ()
    """One address per worker; the relay runs on the first. Empty: ``host`` for all."""
    broker_password_env: str = ""
    """Environment variable with the password of ``broker`` (never in the URL)."""
    broker_password_file: str = ""

    def host_of(self, index: int) -> str:
        """Address of worker ``index`` (0-based): its ``hosts`` entry or ``host``."""
        return self.hosts[index] if index < len(self.hosts) else self.host


@dataclass(frozen=True)
class ServiceSpec:
    """An upstream HTTP service that service clients and the gateway may call.

    ``timeout`` is the budget of one call with its retries; ``retries`` extra attempts
    are made for idempotent requests only. The circuit breaker opens when at least
    ``breaker_minimum_calls`` calls in the last ``breaker_window`` seconds failed at a
    rate of ``breaker_failure_rate`` or more, and lets a trial call through after
    ``breaker_reset`` seconds.
    """

    name: str
    urls: tuple[str, ...]
    timeout: float = 5.0
    connect_timeout: float = 1.0
    retries: int = 2
    breaker_failure_rate: float = 0.5
    breaker_minimum_calls: int = 5
    breaker_window: float = 10.0
    breaker_reset: float = 5.0


@dataclass(frozen=True)
class RouteSpec:
    """A gateway route: requests under ``prefix`` go to the service named ``service``.

    ``timeout`` and ``retries`` override the service's values for this route (None: the
    service's); ``write_timeout`` is the timeout of requests that are not GET, HEAD or
    OPTIONS (None: ``timeout``), for writes that wait for replicas or the edge's purge;
    ``strip_prefix`` removes the prefix before forwarding.
    """

    prefix: str
    service: str
    strip_prefix: bool = False
    timeout: float | None = None
    retries: int | None = None
    write_timeout: float | None = None


@dataclass(frozen=True)
class CompositionSpec:
    """An aggregated gateway endpoint: GET ``path`` calls every part concurrently.

    ``parts`` are ``(key, service, path template)``; placeholders such as ``{user_id}``
    come from ``path``. A failed part listed in ``optional`` becomes ``null``; any other
    failed part fails the whole answer.
    """

    path: str
    parts: tuple[tuple[str, str, str], ...]
    optional: tuple[str, ...] = ()
    timeout: float | None = None


@dataclass(frozen=True)
class GatewaySpec:
    """The ASGI API gateway: routes, aggregated endpoints and per-client rate limit."""

    host: str = "127.0.0.1"
    port: Port = AUTO
    routes: tuple[RouteSpec, ...] = ()
    compositions: tuple[CompositionSpec, ...] = ()
    rate_limit: int = 0
    rate_window: float = 1.0
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class PgBouncerSpec:
    """PgBouncer in front of every primary (off unless ``enabled``).

    In ``transaction`` mode a server connection is lent to a client for one transaction
    only, so many app-server connections share ``default_pool_size`` server connections
    per database; Django then needs server-side cursors off (:mod:`djscale.settings`).
    ``port`` is the port of the main group's PgBouncer; shards' PgBouncers get free ports.
    """

    enabled: bool = False
    pool_mode: str = "transaction"
    default_pool_size: int = 20
    max_client_conn: int = 2000
    port: Port = AUTO


@dataclass(frozen=True)
class KubernetesSpec:
    """How ``djscale deploy kubernetes`` renders the topology as manifests.

    Defaults derive from the rest of the topology: the namespace and image from the
    project name, the autoscaler's minimum from ``app.servers``. Secrets are named, never
    given: ``db_secret`` (type ``kubernetes.io/basic-auth``: the database user and
    password) and ``app_secret`` (key ``DJANGO_SECRET_KEY``) must exist in the namespace.
    """

    namespace: str = "djscale"
    image: str = "djscale:latest"
    min_replicas: int = 2
    max_replicas: int = 8
    target_cpu_percent: int = 70
    prometheus_adapter: bool = False
    """The cluster runs prometheus-adapter: the HPA may follow ``[app] autoscale``'s latency."""
    ingress_host: str = ""
    ingress_class: str = "nginx"
    tls_secret: str = ""
    db_secret: str = "djscale-db"
    app_secret: str = "djscale-app"
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"
    storage_size: str = "10Gi"
    storage_class: str = ""
    postgres_image: str = "ghcr.io/cloudnative-pg/postgresql:15"
    postgres_cpu: str = "1"
    postgres_memory: str = "1Gi"
    redis_image: str = "redis:7.0"
    redis_memory: str = "512Mi"
    pooler_instances: int = 2


@dataclass(frozen=True)
class ShardingSpec:
    """How sharded rows map to logical shards and how their 64-bit ids are built.

    ``logical_shards`` must never change once data exists (it is part of every row's
    placement); ``epoch_ms`` is the custom epoch of the 41-bit millisecond part of ids.
    """

    logical_shards: int = 1024
    epoch_ms: int = DEFAULT_SHARD_EPOCH_MS
    mode: str = "hash"


@dataclass(frozen=True)
class Topology:
    """A whole cluster: the single source of truth for settings, processes and manifests."""

    project: ProjectSpec = field(default_factory=ProjectSpec)
    postgres: DatabaseGroup = field(default_factory=lambda: DatabaseGroup(name="default"))
    shards: tuple[DatabaseGroup, ...] = ()
    redis: RedisSpec = field(default_factory=RedisSpec)
    app: AppSpec = field(default_factory=AppSpec)
    lb: LoadBalancerSpec = field(default_factory=LoadBalancerSpec)
    celery: CelerySpec = field(default_factory=CelerySpec)
    services: tuple[ServiceSpec, ...] = ()
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    pgbouncer: PgBouncerSpec = field(default_factory=PgBouncerSpec)
    kubernetes: KubernetesSpec = field(default_factory=KubernetesSpec)
    edge: EdgeSpec = field(default_factory=EdgeSpec)
    sharding: ShardingSpec = field(default_factory=ShardingSpec)
    hosts: tuple[HostSpec, ...] = ()
    source: str = "<memory>"

    def host_at(self, address: str) -> HostSpec | None:
        """The ``[hosts]`` machine with this address, or None (a plain address)."""
        for host in self.hosts:
            if host.address == address:
                return host
        return None

    def netns_of(self, address: str) -> str:
        """The network namespace the local cluster runs ``address``'s processes in ('')."""
        host = self.host_at(address)
        return host.netns if host is not None else ""

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; TopologyError naming the known ones otherwise."""
        for spec in self.services:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.services) or "none"
        raise TopologyError(f"no service {name!r} in [services] (configured: {known})")

    @property
    def database_groups(self) -> tuple[DatabaseGroup, ...]:
        """The main group followed by the shard groups."""
        return (self.postgres, *self.shards)


# --------------------------------------------------------------------------- parsing


KeyRecord = tuple[str, str, object, str]
"""``(table path, key, default, what is allowed)``, as the parser read it."""

_recording: list[KeyRecord] | None = None


def record_keys(data: Mapping[str, Any]) -> list[KeyRecord]:
    """Parse ``data`` and return every key the parser allows or reads, in order.

    Each allowed key appears once with no default; each key read through a typed getter
    appears again with its default and what it allows. The reference of the topology
    file (:mod:`djscale.topology_reference`) is generated from this, so it cannot drift
    from the parser.
    """
    global _recording
    _recording = []
    try:
        _parse(data, "<reference>")
        return _recording
    finally:
        _recording = None


class _Section:
    """Typed access to one table of the file; every error names the full key."""

    def __init__(self, data: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        self.data = data
        self.path = path
        if _recording is not None:
            _recording.extend((path, name, None, "") for name in allowed)
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise TopologyError(
                f"unknown key {self._key(unknown[0])!r}; allowed keys in "
                f"[{path or 'top level'}]: {', '.join(sorted(allowed))}"
            )

    def _key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _note(self, name: str, default: object, allowed: str) -> None:
        if _recording is not None:
            _recording.append((self.path, name, default, allowed))

    def _bad(self, name: str, value: object, allowed: str) -> TopologyError:
        return TopologyError(f"{self._key(name)} = {value!r} is invalid: expected {allowed}")

    def get_str(self, name: str, default: str, *, choices: Sequence[str] = (),
            pattern: re.Pattern[str] | None = None, what: str = "a string") -> str:
        self._note(name, default,
                   "one of " + ", ".join(repr(c) for c in choices) if choices else what)
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise self._bad(name, value, what)
        if choices and value not in choices:
            raise self._bad(name, value, "one of " + ", ".join(repr(c) for c in choices))
        if pattern is not None and not pattern.match(value):
            raise self._bad(name, value, what)
        return value

    def get_int(self, name: str, default: int, *, minimum: int = 0,
            maximum: int | None = None) -> int:
        self._note(name, default, f"an integer between {minimum} and {maximum}"
                   if maximum is not None else f"an integer >= {minimum}")
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, value, f"an integer >= {minimum}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self._bad(name, value, f"an integer {bound}")
        return value

    def get_float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        self._note(name, default, f"a number >= {minimum:g}")
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self._bad(name, value, f"a number >= {minimum}")
        return float(value)

    def get_bool(self, name: str, default: bool) -> bool:
        self._note(name, default, "true or false")
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, value, "true or false")
        return value

    def port(self, name: str, default: Port = AUTO) -> Port:
        self._note(name, default, '"auto" or a port 1-65535')
        return _port(self.data.get(name, default), self._key(name))

    def host(self, name: str, default: str, hosts: Mapping[str, HostSpec]) -> str:
        """A ``host``: the address of a ``[hosts]`` name, or an address as it is."""
        self._note(name, default, "a host name, an IP address or a [hosts] name")
        return _host(self.data.get(name, default), self._key(name), hosts)

    def hosts(self, name: str, hosts: Mapping[str, HostSpec], *, count: int,
              what: str) -> tuple[str, ...]:
        """A list of hosts, empty or exactly one per ``what`` (``count`` of them)."""
        self._note(name, [], f"a list of hosts, exactly one per {what}")
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self._bad(name, value, f"a list of host names, one per {what}")
        if value and len(value) != count:
            raise TopologyError(
                f"{self._key(name)} has {len(value)} entries but there are {count} "
                f"{what}s: give exactly one host per {what} (or leave it out)")
        return tuple(_host(v, f"{self._key(name)}[{i}]", hosts) for i, v in enumerate(value))

    def ports(self, name: str) -> tuple[Port, ...]:
        self._note(name, [], 'a list of ports ("auto" or 1-65535)')
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self._bad(name, value, 'a list of ports (integers or "auto")')
        return tuple(_port(v, f"{self._key(name)}[{i}]") for i, v in enumerate(value))

    def ints(self, name: str, *, minimum: int = 0) -> tuple[int, ...]:
        self._note(name, [], f"a list of integers >= {minimum}")
        value = self.data.get(name, [])
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value
        ):
            raise self._bad(name, value, f"a list of integers >= {minimum}")
        return tuple(value)

    def strs(self, name: str, default: Sequence[str]) -> tuple[str, ...]:
        self._note(name, list(default), "a list of non-empty strings")
        value = self.data.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._bad(name, value, "a list of non-empty strings")
        return tuple(value)


def _port(value: object, key: str) -> Port:
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise TopologyError(f'{key} = {value!r} is invalid: expected "auto" or a port 1-65535')
    return value


def _host(value: object, key: str, hosts: Mapping[str, HostSpec]) -> str:
    if isinstance(value, str) and value in hosts:
        return hosts[value].address
    if not isinstance(value, str) or not _HOST_RE.match(value):
        raise TopologyError(f"{key} = {value!r} is invalid: expected {_HOST}")
    if hosts and not any(c in value for c in ".:") and value != "localhost":
        # With [hosts], a bare word is a host name: a typo must not become a DNS lookup.
        raise TopologyError(f"{key} = {value!r} is not a host of [hosts] "
                            f"(known: {', '.join(sorted(hosts))}) nor an IP address")
    return value


def _named_tables(data: Mapping[str, Any], section: str, name_re: re.Pattern[str],
                  rule: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(name, path, table)`` of each ``[section.<name>]``, names and tables checked."""
    for name, raw in data.items():
        path = f"{section}.{name}"
        if not name_re.match(name):
            raise TopologyError(f"[{path}] is invalid: {rule}")
        if not isinstance(raw, dict):
            raise TopologyError(f"{path} = {raw!r} is invalid: expected a table [{path}]")
        yield name, path, raw


def _hosts(data: Mapping[str, Any]) -> dict[str, HostSpec]:
    hosts: dict[str, HostSpec] = {}
    for name, path, raw in _named_tables(
            data, "hosts", _HOST_NAME_RE,
            "a host name is lowercase letters, digits, _ and -, starting with a letter"):
        s = _Section(raw, path, ("address", "netns"))
        if "address" not in raw:
            raise TopologyError(f"{path}.address is missing: give the host's IP address "
                                "such as \"10.77.0.2\"")
        address = s.get_str("address", "", what="an IP address such as '10.77.0.2'")
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise s._bad("address", address, "an IP address such as '10.77.0.2'") from None
        netns = s.get_str("netns", "", what="a network namespace name")
        if netns and not _NETNS_RE.match(netns):
            raise s._bad("netns", netns, "a network namespace name (letters, digits, _.-)")
        for other in hosts.values():
            if other.address == address:
                raise TopologyError(f"{path}.address = {address!r} is invalid: "
                                    f"hosts.{other.name} has the same address")
            if netns and other.netns == netns:
                raise TopologyError(f"{path}.netns = {netns!r} is invalid: "
                                    f"hosts.{other.name} has the same namespace")
        hosts[name] = HostSpec(name=name, address=address, netns=netns)
    return hosts


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise TopologyError(f"{name} = {value!r} is invalid: expected a table [{name}]")
    return value


_HOST = "a host name or IP address"


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_ENV_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)?$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV_WHAT = "an environment variable name such as 'PGPASSWORD_PROD'"
# libpq parameters that have their own key in the topology (or must never be written).
_DEDICATED = {"host": "host", "hostaddr": "host", "port": "port", "dbname": "database",
              "user": "user", "sslmode": "sslmode", "sslrootcert": "sslrootcert",
              "sslcert": "sslcert", "sslkey": "sslkey", "passfile": "password_file"}


def _no_password(data: Mapping[str, Any], path: str, key: str = "password",
                 example: str = "PGPASSWORD_PROD") -> None:
    """A literal password in the file is refused with a message saying what to write."""
    if key in data:
        prefix = key.removesuffix("password")
        raise TopologyError(
            f"{path}.{key} is not allowed: a password never goes in the topology file; "
            f"say where it is kept instead: {prefix}password_env = \"{example}\" "
            f"(an environment variable) or {prefix}password_file = \"/run/secrets/...\"")


def _credentials(s: _Section, prefix: str = "", inherited: tuple[str, str] = ("", "")
                 ) -> tuple[str, str]:
    """``(password_env, password_file)``: at most one of them, inherited when neither."""
    env_key, file_key = f"{prefix}password_env", f"{prefix}password_file"
    s._note(env_key, inherited[0], _ENV_WHAT)
    s._note(file_key, inherited[1], "a file path (relative: to the topology file)")
    if env_key not in s.data and file_key not in s.data:
        return inherited
    if env_key in s.data and file_key in s.data:
        raise TopologyError(f"{s._key(env_key)} and {s._key(file_key)} are both set: "
                            "give one of them")
    env = s.get_str(env_key, "", pattern=_ENV_RE, what=_ENV_WHAT)
    file = s.get_str(file_key, "", what="a file path")
    return env, file


def _libpq_options(s: _Section, inherited: tuple[tuple[str, Any], ...]
                   ) -> tuple[tuple[str, str | int | float | bool], ...]:
    s._note("options", dict(inherited), "a table of libpq parameters (string, number, boolean)")
    raw = s.data.get("options")
    if raw is None:
        return inherited
    if not isinstance(raw, dict):
        raise s._bad("options", raw, "a table of libpq parameters such as "
                     "{ application_name = \"shop\", keepalives_idle = 30 }")
    found: list[tuple[str, str | int | float | bool]] = []
    for key, value in sorted(raw.items()):
        full = s._key(f"options.{key}")
        if key == "password":
            _no_password(raw, s._key("options"))
        if key in _DEDICATED:
            raise TopologyError(f"{full} is not allowed here: use {s._key(_DEDICATED[key])}")
        if not _OPTION_RE.match(key):
            raise TopologyError(f"{full} is invalid: expected a libpq parameter name "
                                "(lowercase letters, digits, _)")
        if not isinstance(value, str | int | float | bool):
            raise TopologyError(f"{full} = {value!r} is invalid: expected a string, "
                                "number or boolean")
        found.append((key, value))
    return tuple(found)


def _group(data: Mapping[str, Any], path: str, name: str, defaults: DatabaseGroup | None,
           hosts: Mapping[str, HostSpec]) -> DatabaseGroup:
    base = defaults or DatabaseGroup(name=name)
    _no_password(data, path)
    s = _Section(data, path, (
        "database", "user", "host", "port", "replicas", "replica_ports",
        "replica_hosts", "max_lag_seconds", "max_lag_bytes", "replica_policy", "conn_max_age",
        "pool", "password_env", "password_file", "sslmode", "sslrootcert", "sslcert",
        "sslkey", "options", "query_deadline_ms", "replica_query_deadline_ms",
        "replica_max_latency_ms",
        "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout_ms",
        "ha", "synchronous", "ha_ttl", "ha_loop_wait", "ha_retry_timeout",
        "maximum_lag_on_failover",
        *(("enabled", "migration_lock_timeout_ms") if defaults is None else ("name",)),
    ))
    if defaults is not None:
        s._note("name", name, "a lowercase alias (letters, digits, _) other than 'default'")
    password_env, password_file = _credentials(
        s, inherited=(base.password_env, base.password_file))
    group = DatabaseGroup(
        name=name,
        database=s.get_str("database", base.database, pattern=_DB_NAME_RE,
                       what="a PostgreSQL identifier (letters, digits, _)"),
        user=s.get_str("user", base.user, pattern=_DB_NAME_RE,
                   what="a PostgreSQL role name (letters, digits, _)"),
        host=s.host("host", base.host, hosts),
        port=s.port("port"),
        replicas=s.get_int("replicas", 0, maximum=16),
        replica_ports=s.ports("replica_ports"),
        replica_hosts=s.hosts("replica_hosts", hosts, count=s.get_int("replicas", 0, maximum=16),
                              what="replica"),
        max_lag_seconds=s.get_float("max_lag_seconds", base.max_lag_seconds),
        max_lag_bytes=s.get_int("max_lag_bytes", base.max_lag_bytes),
        replica_policy=s.get_str("replica_policy", base.replica_policy, choices=REPLICA_POLICIES),
        conn_max_age=s.get_int("conn_max_age", base.conn_max_age),
        pool=s.get_bool("pool", base.pool),
        query_deadline_ms=s.get_int("query_deadline_ms", base.query_deadline_ms),
        replica_query_deadline_ms=s.get_int("replica_query_deadline_ms",
                                            base.replica_query_deadline_ms),
        replica_max_latency_ms=s.get_int("replica_max_latency_ms",
                                         base.replica_max_latency_ms),
        keepalives_idle=s.get_int("keepalives_idle", base.keepalives_idle),
        keepalives_interval=s.get_int("keepalives_interval", base.keepalives_interval,
                                      minimum=1),
        keepalives_count=s.get_int("keepalives_count", base.keepalives_count, minimum=1),
        tcp_user_timeout_ms=s.get_int("tcp_user_timeout_ms", base.tcp_user_timeout_ms),
        migration_lock_timeout_ms=s.get_int("migration_lock_timeout_ms",
                                            base.migration_lock_timeout_ms),
        password_env=password_env,
        password_file=password_file,
        sslmode=s.get_str("sslmode", base.sslmode, choices=("", *SSL_MODES)),
        sslrootcert=s.get_str("sslrootcert", base.sslrootcert, what="a file path"),
        sslcert=s.get_str("sslcert", base.sslcert, what="a file path"),
        sslkey=s.get_str("sslkey", base.sslkey, what="a file path"),
        options=_libpq_options(s, base.options),
        enabled=s.get_bool("enabled", True) if defaults is None else True,
        ha=s.get_str("ha", base.ha, choices=HA_MODES),
        synchronous=s.get_bool("synchronous", base.synchronous),
        ha_ttl=s.get_int("ha_ttl", base.ha_ttl, minimum=20, maximum=3600),
        ha_loop_wait=s.get_int("ha_loop_wait", base.ha_loop_wait, minimum=1, maximum=600),
        ha_retry_timeout=s.get_int("ha_retry_timeout", base.ha_retry_timeout, minimum=1,
                                   maximum=600),
        maximum_lag_on_failover=s.get_int("maximum_lag_on_failover",
                                          base.maximum_lag_on_failover),
    )
    if group.ha_loop_wait + 2 * group.ha_retry_timeout > group.ha_ttl:
        raise TopologyError(
            f"{path}.ha_loop_wait + 2 * {path}.ha_retry_timeout = "
            f"{group.ha_loop_wait + 2 * group.ha_retry_timeout} exceeds {path}.ha_ttl = "
            f"{group.ha_ttl}: Patroni needs loop_wait + 2 * retry_timeout <= ttl")
    if group.synchronous and group.ha == "none":
        raise TopologyError(f"{path}.synchronous = true needs {path}.ha = \"patroni\": "
                            "synchronous replication is Patroni's synchronous mode")
    if len(group.replica_ports) > group.replicas:
        raise TopologyError(
            f"{path}.replica_ports has {len(group.replica_ports)} entries but {path}.replicas "
            f"= {group.replicas}: give at most one port per replica"
        )
    if group.pool and group.conn_max_age:
        # Django refuses persistent connections together with its pool.
        group = DatabaseGroup(**{**group.__dict__, "conn_max_age": 0})
    return group


def parse(data: Mapping[str, Any], *, source: str = "<memory>") -> Topology:
    """Validate an already-decoded topology mapping; raise TopologyError when invalid."""
    try:
        return _parse(data, source)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def _parse(data: Mapping[str, Any], source: str) -> Topology:
    _Section(data, "", ("project", "postgres", "shards", "redis", "app", "lb", "celery",
                        "services", "gateway", "pgbouncer", "kubernetes", "sharding", "hosts",
                        "edge"))
    hosts = _hosts(_table(data, "hosts"))

    p = _Section(_table(data, "project"), "project", ("name", "pythonpath", "settings", "wsgi"))
    project = ProjectSpec(
        name=p.get_str("name", "djscale", pattern=_NAME_RE,
                   what="a lowercase name (letters, digits, _; starting with a letter)"),
        pythonpath=p.get_str("pythonpath", "."),
        settings=p.get_str("settings", "project.settings",
                       pattern=re.compile(r"^[A-Za-z_][\w.]*$"), what="a dotted module path"),
        wsgi=p.get_str("wsgi", "project.wsgi:application",
                   pattern=re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"),
                   what="'module.path:callable'"),
    )

    postgres = _group(_table(data, "postgres"), "postgres", "default", None, hosts)

    raw_shards = data.get("shards", [])
    if not isinstance(raw_shards, list):
        raise TopologyError(
            f"shards = {raw_shards!r} is invalid: expected an array of tables [[shards]]"
        )
    shards: list[DatabaseGroup] = []
    for i, raw in enumerate(raw_shards):
        path = f"shards[{i}]"
        if not isinstance(raw, dict):
            raise TopologyError(f"{path} = {raw!r} is invalid: expected a table")
        name = raw.get("name", f"shard{i + 1}")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == "default":
            raise TopologyError(
                f"{path}.name = {name!r} is invalid: expected a lowercase alias "
                "(letters, digits, _) other than 'default'"
            )
        if any(s.name == name for s in shards):
            raise TopologyError(f"{path}.name = {name!r} is invalid: shard names must be unique")
        shards.append(_group(raw, path, name, postgres, hosts))

    if not postgres.enabled and (postgres.replicas or shards):
        what = "postgres.replicas" if postgres.replicas else "[[shards]]"
        raise TopologyError(
            f"{what} needs PostgreSQL but postgres.enabled = false: replicas and shards are "
            "PostgreSQL databases (set postgres.enabled = true, or remove them)")

    redis = _redis(_table(data, "redis"), hosts)

    a = _Section(_table(data, "app"), "app",
                 ("servers", "workers", "threads", "host", "hosts", "ports", "weights",
                  "timeout", "autoscale"))
    servers = a.get_int("servers", 2, minimum=1, maximum=64)
    app = AppSpec(
        servers=servers,
        workers=a.get_int("workers", 2, minimum=1, maximum=64),
        threads=a.get_int("threads", 1, minimum=1, maximum=64),
        host=a.host("host", "127.0.0.1", hosts),
        hosts=a.hosts("hosts", hosts, count=servers, what="app server"),
        ports=a.ports("ports"),
        weights=a.ints("weights", minimum=1),
        timeout=a.get_int("timeout", 30, minimum=1),
        autoscale=_autoscale(a.data.get("autoscale"), servers),
    )
    for key, values in (("ports", app.ports), ("weights", app.weights)):
        if len(values) > app.servers:
            raise TopologyError(
                f"app.{key} has {len(values)} entries but app.servers = {app.servers}: "
                "give at most one per app server"
            )

    lbs = _Section(_table(data, "lb"), "lb", (
        "kind", "method", "host", "port", "max_fails", "fail_timeout",
        "health_check_interval_ms", "slowstart_seconds",
    ))
    lb = LoadBalancerSpec(
        kind=lbs.get_str("kind", "nginx", choices=LB_KINDS),
        method=lbs.get_str("method", "round_robin", choices=LB_METHODS),
        host=lbs.host("host", "127.0.0.1", hosts),
        port=lbs.port("port"),
        max_fails=lbs.get_int("max_fails", 2, minimum=1),
        fail_timeout=lbs.get_int("fail_timeout", 5, minimum=1),
        health_check_interval_ms=lbs.get_int("health_check_interval_ms", 1000, minimum=100),
        slowstart_seconds=lbs.get_int("slowstart_seconds", 5),
    )

    _no_password(_table(data, "celery"), "celery", "broker_password", "BROKER_PASSWORD")
    c = _Section(_table(data, "celery"), "celery",
                 ("workers", "concurrency", "app", "queues", "relay", "broker", "host", "hosts",
                  "broker_password_env", "broker_password_file"))
    broker_env, broker_file = _credentials(c, "broker_")
    workers = c.get_int("workers", 0, maximum=32)
    celery = CelerySpec(
        workers=workers,
        concurrency=c.get_int("concurrency", 2, minimum=1, maximum=64),
        app=c.get_str("app", "", pattern=re.compile(r"^([A-Za-z_][\w.]*(:[A-Za-z_]\w*)?)?$"),
                  what="'module.path:app'"),
        queues=c.strs("queues", ("celery",)),
        relay=c.get_bool("relay", False),
        broker=c.get_str("broker", "", pattern=re.compile(r"^((redis|rediss|amqp)://\S+)?$"),
                         what="a broker URL (redis://host:port/db or amqp://...)"),
        host=c.host("host", "127.0.0.1", hosts),
        hosts=c.hosts("hosts", hosts, count=workers, what="worker"),
        broker_password_env=broker_env,
        broker_password_file=broker_file,
    )
    if re.match(r"^\w+://[^/@]*:[^/@]*@", celery.broker):
        raise TopologyError(
            "celery.broker must not contain a password: write the URL without it and say "
            "where the password is kept: broker_password_env = \"BROKER_PASSWORD\" or "
            "broker_password_file = \"/run/secrets/...\"")
    if celery.workers and not celery.app:
        raise TopologyError(
            f"celery.workers = {celery.workers} needs celery.app "
            "(the Celery application, e.g. 'project.celery:app')"
        )

    services = _services(_table(data, "services"))
    gateway = _gateway(_table(data, "gateway"), {s.name for s in services}, hosts)

    pgbouncer = _pgbouncer(_table(data, "pgbouncer"))
    if pgbouncer.enabled and any(g.ha != "none" for g in (postgres, *shards)):
        raise TopologyError("pgbouncer.enabled = true with postgres.ha = \"patroni\" is not "
                            "supported: PgBouncer would keep sending writes to the old primary "
                            "after a failover; the app connects to the Patroni members itself")
    if pgbouncer.enabled and not postgres.enabled:
        raise TopologyError("pgbouncer.enabled = true needs PostgreSQL but postgres.enabled = "
                            "false: PgBouncer pools PostgreSQL connections")
    return Topology(project=project, postgres=postgres, shards=tuple(shards), redis=redis,
                    app=app, lb=lb, celery=celery, services=services, gateway=gateway,
                    pgbouncer=pgbouncer,
                    kubernetes=_kubernetes(_table(data, "kubernetes"), project, app),
                    sharding=_sharding(_table(data, "sharding")),
                    edge=_edge(_table(data, "edge"), hosts),
                    hosts=tuple(hosts.values()), source=source)


def _edge(data: Mapping[str, Any], hosts: Mapping[str, HostSpec]) -> EdgeSpec:
    _no_password(data, "edge", "token", "CDN_TOKEN")
    e = _Section(data, "edge", (
        "kind", "host", "port", "public_paths", "session_cookies", "grace_seconds",
        "memory_mb", "probe_interval_ms", "threads_min", "purge_from", "purger", "purge_mode",
        "purge_urls", "service_id", "zone_id", "distribution_id", "token_env",
        "aws_key_id_env", "aws_secret_env", "api_url", "batch_ms", "retries"))
    kind = e.get_str("kind", "none", choices=EDGE_KINDS)
    public_paths = e.strs("public_paths", ())
    for i, pattern in enumerate(public_paths):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TopologyError(f"edge.public_paths[{i}] = {pattern!r} is invalid: "
                                f"not a regular expression ({exc})") from None
        if '"}' in pattern:
            raise TopologyError(f'edge.public_paths[{i}] = {pattern!r} is invalid: it may '
                                'not contain \'"}\'')
    cookie = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    purge_from = e.strs("purge_from", ("127.0.0.1", "::1"))
    for i, entry in enumerate(purge_from):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise TopologyError(f"edge.purge_from[{i}] = {entry!r} is invalid: expected an "
                                "IP address or a CIDR network") from None
    url = re.compile(r"^https?://[^\s/]+(/\S*)?$")
    spec = EdgeSpec(
        kind=kind,
        host=e.host("host", "127.0.0.1", hosts),
        port=e.port("port"),
        public_paths=public_paths,
        session_cookies=e.strs("session_cookies", ("sessionid",)),
        grace_seconds=e.get_int("grace_seconds", 300),
        memory_mb=e.get_int("memory_mb", 256, minimum=16),
        probe_interval_ms=e.get_int("probe_interval_ms", 1000, minimum=100),
        threads_min=e.get_int("threads_min", 50, minimum=5, maximum=5000),
        purge_from=purge_from,
        purger=e.get_str("purger", "varnish" if kind == "varnish" else "none",
                         choices=PURGERS),
        purge_mode=e.get_str("purge_mode", "hard", choices=PURGE_MODES),
        purge_urls=e.strs("purge_urls", ()),
        service_id=e.get_str("service_id", "", what="the Fastly service id"),
        zone_id=e.get_str("zone_id", "", what="the Cloudflare zone id"),
        distribution_id=e.get_str("distribution_id", "",
                                  what="the CloudFront distribution id"),
        token_env=e.get_str("token_env", "", pattern=_ENV_RE, what=_ENV_WHAT),
        aws_key_id_env=e.get_str("aws_key_id_env", "", pattern=_ENV_RE, what=_ENV_WHAT),
        aws_secret_env=e.get_str("aws_secret_env", "", pattern=_ENV_RE, what=_ENV_WHAT),
        api_url=e.get_str("api_url", "", pattern=re.compile(r"^(https?://\S+)?$"),
                          what="an http(s) URL"),
        batch_ms=e.get_int("batch_ms", 5, maximum=10_000),
        retries=e.get_int("retries", 3, maximum=20),
    )
    for i, name in enumerate(spec.session_cookies):
        if not cookie.match(name):
            raise TopologyError(f"edge.session_cookies[{i}] = {name!r} is invalid: "
                                "expected a cookie name")
    for i, base in enumerate(spec.purge_urls):
        if not url.match(base):
            raise TopologyError(f"edge.purge_urls[{i}] = {base!r} is invalid: expected "
                                "an http(s) URL such as \"http://10.0.0.5:6081\"")
    needs = {"fastly": ("service_id", "token_env"), "cloudflare": ("zone_id", "token_env"),
             "cloudfront": ("distribution_id", "aws_key_id_env", "aws_secret_env")}
    for key in needs.get(spec.purger, ()):
        if not getattr(spec, key):
            raise TopologyError(f"edge.purger = {spec.purger!r} needs edge.{key}")
    return spec


def _redis(data: Mapping[str, Any], hosts: Mapping[str, HostSpec]) -> RedisSpec:
    _no_password(data, "redis", example="REDIS_PASSWORD")
    r = _Section(data, "redis", (
        "mode", "host", "port", "masters", "replicas_per_master", "addresses", "tls",
        "ca_file", "cert_file", "key_file", "username", "password_env", "password_file",
        "broker_host", "broker_port"))
    password_env, password_file = _credentials(r)
    mode = r.get_str("mode", "single", choices=REDIS_MODES)
    host = r.host("host", "127.0.0.1", hosts)
    addresses: list[tuple[str, int]] = []
    for i, value in enumerate(r.strs("addresses", ())):
        key = f"redis.addresses[{i}]"
        node_host, _, node_port = value.rpartition(":")
        if not node_host or not node_port.isdigit():
            raise TopologyError(f"{key} = {value!r} is invalid: expected \"host:port\"")
        port = _port(int(node_port), key)
        assert port != AUTO
        addresses.append((_host(node_host, key, hosts), port))
    if addresses and mode != "cluster":
        raise TopologyError("redis.addresses lists the nodes of an existing Redis Cluster: "
                            "it needs redis.mode = \"cluster\" (one node: redis.host/port)")
    spec = RedisSpec(
        mode=mode,
        host=host,
        port=r.port("port"),
        masters=r.get_int("masters", 3, minimum=3, maximum=16),
        replicas_per_master=r.get_int("replicas_per_master", 1, maximum=4),
        addresses=tuple(addresses),
        tls=r.get_bool("tls", False),
        ca_file=r.get_str("ca_file", "", what="a file path"),
        cert_file=r.get_str("cert_file", "", what="a file path"),
        key_file=r.get_str("key_file", "", what="a file path"),
        username=r.get_str("username", "", pattern=re.compile(r"^[^\s:@/]*$"),
                           what="a Redis ACL user name (no spaces, ':', '@' or '/')"),
        password_env=password_env,
        password_file=password_file,
        broker_host=r.host("broker_host", host, hosts),
        broker_port=r.port("broker_port"),
    )
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(spec, key) and not spec.tls:
            raise TopologyError(f"redis.{key} is set but redis.tls = false: set "
                                "redis.tls = true to connect with TLS")
    if bool(spec.cert_file) != bool(spec.key_file):
        raise TopologyError("redis.cert_file and redis.key_file go together (a client "
                            "certificate and its key): give both or neither")
    return spec


def _services(data: Mapping[str, Any]) -> tuple[ServiceSpec, ...]:
    specs = []
    for name, path, raw in _named_tables(
            data, "services", _NAME_RE,
            "a service name is lowercase letters, digits and _, starting with a letter"):
        s = _Section(raw, path, (
            "urls", "timeout", "connect_timeout", "retries", "breaker_failure_rate",
            "breaker_minimum_calls", "breaker_window", "breaker_reset",
        ))
        urls = s.strs("urls", ())
        if not urls:
            raise TopologyError(f"{path}.urls is missing: give at least one base URL "
                                "such as \"http://127.0.0.1:8101\"")
        for i, url in enumerate(urls):
            if not _URL_RE.match(url):
                raise TopologyError(
                    f"{path}.urls[{i}] = {url!r} is invalid: expected http(s)://host[:port]"
                    "[/path] without query or fragment")
        rate = s.get_float("breaker_failure_rate", 0.5)
        if not 0 < rate <= 1:
            raise s._bad("breaker_failure_rate", rate, "a number in (0, 1]")
        specs.append(ServiceSpec(
            name=name, urls=urls,
            timeout=_positive(s, "timeout", 5.0),
            connect_timeout=_positive(s, "connect_timeout", 1.0),
            retries=s.get_int("retries", 2, maximum=10),
            breaker_failure_rate=rate,
            breaker_minimum_calls=s.get_int("breaker_minimum_calls", 5, minimum=1),
            breaker_window=_positive(s, "breaker_window", 10.0),
            breaker_reset=_positive(s, "breaker_reset", 5.0),
        ))
    return tuple(specs)


def _positive(s: _Section, name: str, default: float) -> float:
    value = s.get_float(name, default)
    if value <= 0:
        raise s._bad(name, value, "a number > 0")
    return value


def _gateway(data: Mapping[str, Any], services: set[str],
             hosts: Mapping[str, HostSpec]) -> GatewaySpec:
    g = _Section(data, "gateway", ("host", "port", "routes", "compositions", "rate_limit",
                                   "rate_window", "max_body_bytes"))

    def known(key: str, name: object) -> str:
        if not isinstance(name, str) or name not in services:
            raise TopologyError(
                f"{key} = {name!r} is invalid: expected a service of [services] "
                f"({', '.join(sorted(services)) or 'none configured'})")
        return name

    g._note("routes", [], "an array of tables [[gateway.routes]]")
    g._note("compositions", [], "an array of tables [[gateway.compositions]]")
    routes: list[RouteSpec] = []
    for i, raw in enumerate(_array(data, "gateway.routes", "routes")):
        path = f"gateway.routes[{i}]"
        r = _Section(raw, path, ("prefix", "service", "strip_prefix", "timeout", "retries",
                                 "write_timeout"))
        r._note("service", "", "a service of [services]")
        r._note("timeout", None, "a number > 0 (none: the service's)")
        r._note("write_timeout", None, "a number > 0 (none: the route's timeout)")
        r._note("retries", None, "an integer between 0 and 10 (none: the service's)")
        prefix = r.get_str("prefix", "", pattern=_PREFIX_RE,
                           what="a path starting with / (letters, digits, ._~-/)")
        if any(x.prefix == prefix for x in routes):
            raise TopologyError(f"{path}.prefix = {prefix!r} is invalid: prefixes must be unique")
        routes.append(RouteSpec(
            prefix=prefix,
            service=known(f"{path}.service", raw.get("service")),
            strip_prefix=r.get_bool("strip_prefix", False),
            timeout=_positive(r, "timeout", 1.0) if "timeout" in raw else None,
            retries=r.get_int("retries", 0, maximum=10) if "retries" in raw else None,
            write_timeout=_positive(r, "write_timeout", 1.0) if "write_timeout" in raw
            else None,
        ))

    compositions: list[CompositionSpec] = []
    for i, raw in enumerate(_array(data, "gateway.compositions", "compositions")):
        path = f"gateway.compositions[{i}]"
        c = _Section(raw, path, ("path", "parts", "optional", "timeout"))
        c._note("parts", {}, 'a table of key = "service:/path/{placeholder}"')
        c._note("timeout", None, "a number > 0 (none: the gateway's)")
        cpath = c.get_str("path", "", pattern=_CPATH_RE,
                          what="a path starting with / with {placeholders}")
        names = set(_PLACEHOLDER_RE.findall(cpath))
        raw_parts = raw.get("parts", {})
        if not isinstance(raw_parts, dict) or not raw_parts:
            raise TopologyError(f"{path}.parts = {raw_parts!r} is invalid: expected a table "
                                "of key = \"service:/path/{placeholder}\"")
        parts = []
        for key, target in raw_parts.items():
            pkey = f"{path}.parts.{key}"
            service, _, template = (target if isinstance(target, str) else "").partition(":")
            if not template or not _TEMPLATE_RE.match(template):
                raise TopologyError(f"{pkey} = {target!r} is invalid: expected "
                                    "\"service:/path\" such as \"orders:/orders/?user={user_id}\"")
            known(f"{pkey} (service)", service)
            unknown = set(_PLACEHOLDER_RE.findall(template)) - names
            if unknown:
                raise TopologyError(f"{pkey} = {target!r} is invalid: placeholder "
                                    f"{{{sorted(unknown)[0]}}} does not appear in {cpath!r}")
            parts.append((key, service, template))
        optional = c.strs("optional", ())
        if set(optional) - set(raw_parts):
            raise TopologyError(f"{path}.optional = {list(optional)!r} is invalid: expected "
                                f"keys of {path}.parts ({', '.join(raw_parts)})")
        compositions.append(CompositionSpec(
            path=cpath, parts=tuple(parts), optional=optional,
            timeout=_positive(c, "timeout", 1.0) if "timeout" in raw else None,
        ))

    return GatewaySpec(
        host=g.host("host", "127.0.0.1", hosts),
        port=g.port("port"),
        routes=tuple(routes),
        compositions=tuple(compositions),
        rate_limit=g.get_int("rate_limit", 0),
        rate_window=_positive(g, "rate_window", 1.0),
        max_body_bytes=g.get_int("max_body_bytes", 1024 * 1024, minimum=1),
    )


def _array(data: Mapping[str, Any], key: str, name: str) -> list[Mapping[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TopologyError(f"{key} = {value!r} is invalid: expected an array of tables "
                            f"[[{key}]]")
    return value


POOL_MODES = ("transaction", "session")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$")
_CPU_RE = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEMORY_RE = re.compile(r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")


def _pgbouncer(data: Mapping[str, Any]) -> PgBouncerSpec:
    s = _Section(data, "pgbouncer",
                 ("enabled", "pool_mode", "default_pool_size", "max_client_conn", "port"))
    return PgBouncerSpec(
        enabled=s.get_bool("enabled", False),
        pool_mode=s.get_str("pool_mode", "transaction", choices=POOL_MODES),
        default_pool_size=s.get_int("default_pool_size", 20, minimum=1, maximum=10000),
        max_client_conn=s.get_int("max_client_conn", 2000, minimum=1, maximum=100000),
        port=s.port("port"),
    )


def _autoscale(raw: object, servers: int) -> AutoscaleSpec | None:
    """``[app] autoscale = { min, max, metric, target, cooldown, interval }`` (None: off)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TopologyError(f"app.autoscale = {raw!r} is invalid: expected a table such as "
                            "{ min = 1, max = 4, metric = \"latency\", target = 250 }")
    s = _Section(raw, "app.autoscale", ("min", "max", "metric", "target", "cooldown",
                                        "interval", "window"))
    low = s.get_int("min", 1, minimum=1, maximum=64)
    spec = AutoscaleSpec(
        min=low,
        max=s.get_int("max", max(4, servers), minimum=1, maximum=64),
        metric=s.get_str("metric", "latency", choices=AUTOSCALE_METRICS),
        target=s.get_float("target", 250.0, minimum=0.001),
        cooldown=s.get_float("cooldown", 30.0),
        interval=s.get_float("interval", 2.0, minimum=0.2),
        window=s.get_float("window", 10.0, minimum=0.2),
    )
    if spec.max < spec.min:
        raise TopologyError(f"app.autoscale.max = {spec.max} is below app.autoscale.min = "
                            f"{spec.min}: max must be at least min")
    if not spec.min <= servers <= spec.max:
        raise TopologyError(f"app.servers = {servers} is outside app.autoscale's range "
                            f"{spec.min}..{spec.max}: it is the count the cluster starts with")
    return spec


def _kubernetes(data: Mapping[str, Any], project: ProjectSpec, app: AppSpec) -> KubernetesSpec:
    s = _Section(data, "kubernetes", (
        "namespace", "image", "min_replicas", "max_replicas", "target_cpu_percent",
        "ingress_host", "ingress_class", "tls_secret", "db_secret", "app_secret",
        "cpu_request", "cpu_limit", "memory_request", "memory_limit", "storage_size",
        "storage_class", "postgres_image", "postgres_cpu", "postgres_memory", "redis_image",
        "redis_memory", "pooler_instances", "prometheus_adapter",
    ))
    base = project.name.replace("_", "-")
    label = "a Kubernetes name (lowercase letters, digits, -)"
    image = "a container image reference such as 'registry.example.com/shop:1.2'"

    def name(key: str, default: str, *, optional: bool = False) -> str:
        value = s.get_str(key, default, what=label)
        if (value or not optional) and not _DNS_LABEL_RE.match(value):
            raise s._bad(key, value, label)
        return value

    scale = app.autoscale
    min_replicas = s.get_int("min_replicas", scale.min if scale else app.servers, minimum=1,
                             maximum=1000)
    spec = KubernetesSpec(
        namespace=name("namespace", base),
        image=s.get_str("image", f"{base}:latest", pattern=_IMAGE_RE, what=image),
        min_replicas=min_replicas,
        max_replicas=s.get_int("max_replicas",
                               scale.max if scale else max(4 * min_replicas, 2), minimum=1,
                               maximum=1000),
        prometheus_adapter=s.get_bool("prometheus_adapter", False),
        target_cpu_percent=s.get_int("target_cpu_percent", 70, minimum=1, maximum=100),
        ingress_host=s.get_str("ingress_host", "", what="a DNS host name"),
        ingress_class=name("ingress_class", "nginx", optional=True),
        tls_secret=name("tls_secret", "", optional=True),
        db_secret=name("db_secret", f"{base}-db"),
        app_secret=name("app_secret", f"{base}-app"),
        cpu_request=s.get_str("cpu_request", "250m", pattern=_CPU_RE,
                              what="a CPU quantity such as '250m' or '2'"),
        cpu_limit=s.get_str("cpu_limit", "1", pattern=_CPU_RE,
                            what="a CPU quantity such as '500m' or '2'"),
        memory_request=s.get_str("memory_request", "256Mi", pattern=_MEMORY_RE,
                                 what="a memory quantity such as '256Mi' or '1Gi'"),
        memory_limit=s.get_str("memory_limit", "512Mi", pattern=_MEMORY_RE,
                               what="a memory quantity such as '512Mi' or '2Gi'"),
        storage_size=s.get_str("storage_size", "10Gi", pattern=_MEMORY_RE,
                               what="a storage quantity such as '10Gi'"),
        storage_class=s.get_str("storage_class", "", what="a storage class name"),
        postgres_image=s.get_str("postgres_image", "ghcr.io/cloudnative-pg/postgresql:15",
                                 pattern=_IMAGE_RE, what=image),
        postgres_cpu=s.get_str("postgres_cpu", "1", pattern=_CPU_RE,
                               what="a CPU quantity such as '500m' or '2'"),
        postgres_memory=s.get_str("postgres_memory", "1Gi", pattern=_MEMORY_RE,
                                  what="a memory quantity such as '1Gi'"),
        redis_image=s.get_str("redis_image", "redis:7.0", pattern=_IMAGE_RE, what=image),
        redis_memory=s.get_str("redis_memory", "512Mi", pattern=_MEMORY_RE,
                               what="a memory quantity such as '512Mi'"),
        pooler_instances=s.get_int("pooler_instances", 2, minimum=1, maximum=64),
    )
    if spec.ingress_host and not _DNS_NAME_RE.match(spec.ingress_host):
        raise s._bad("ingress_host", spec.ingress_host,
                     "a DNS host name such as 'shop.example.com'")
    if spec.max_replicas < spec.min_replicas:
        raise TopologyError(
            f"kubernetes.max_replicas = {spec.max_replicas} is invalid: expected at least "
            f"kubernetes.min_replicas ({spec.min_replicas})")
    return spec


def _sharding(data: Mapping[str, Any]) -> ShardingSpec:
    s = _Section(data, "sharding", ("logical_shards", "epoch", "mode"))
    return ShardingSpec(
        logical_shards=s.get_int("logical_shards", 1024, minimum=1, maximum=MAX_LOGICAL_SHARDS),
        epoch_ms=_epoch_ms(s),
        mode=s.get_str("mode", "hash", choices=SHARDING_MODES),
    )


def _epoch_ms(s: _Section) -> int:
    """``sharding.epoch``: a past UTC date/datetime (TOML value or ISO string) -> ms."""
    what = 'a past UTC date or datetime such as "2025-01-01" (not before 1970)'
    s._note("epoch", "2025-01-01", what)
    value = s.data.get("epoch")
    if value is None:
        return DEFAULT_SHARD_EPOCH_MS
    parsed: object = value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise s._bad("epoch", value, what) from None
    if isinstance(parsed, dt.date) and not isinstance(parsed, dt.datetime):
        parsed = dt.datetime(parsed.year, parsed.month, parsed.day)
    if not isinstance(parsed, dt.datetime):
        raise s._bad("epoch", value, what)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    ms = int(parsed.timestamp() * 1000)
    if ms < 0 or parsed > dt.datetime.now(dt.UTC):
        raise s._bad("epoch", value, what)
    return ms


PROFILE_VARIABLE = "DJSCALE_PROFILE"
"""Environment variable naming the profile layered over the topology file."""
_PROFILE_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,30}$")


def profile_path(path: str | Path, profile: str) -> Path:
    """The override file of ``profile``: ``djscale.prod.toml`` next to ``djscale.toml``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{profile}{path.suffix or '.toml'}")


def load(path: str | Path, *, profile: str | None = None) -> Topology:
    """Read and validate a topology file, with its base and its profile layered.

    A file whose top level says ``extends = "djscale.toml"`` is read over that file (its
    tables merged into the base's, key by key). ``profile`` (default
    ``$DJSCALE_PROFILE``; empty: none) layers :func:`profile_path` over ``path`` the same
    way, so ``DJSCALE_PROFILE=prod`` turns ``djscale.toml`` into ``djscale.toml`` +
    ``djscale.prod.toml``. Raise :class:`~djscale.errors.TopologyError` with a one-line
    message when a file is missing, is not valid TOML, or holds an invalid value.
    """
    path = Path(path)
    if profile is None:
        profile = os.environ.get(PROFILE_VARIABLE, "")
    data, layers = _read_layers(path, ())
    if profile:
        if not _PROFILE_RE.match(profile):
            raise TopologyError(f"{PROFILE_VARIABLE} = {profile!r} is invalid: expected a "
                                "profile name such as 'prod' (lowercase letters, digits, _-)")
        override = profile_path(path, profile)
        if not override.exists():
            raise TopologyError(f"{override}: topology file of profile {profile!r} not found "
                                f"({PROFILE_VARIABLE}={profile} layers it over {path})")
        top = _read(override)
        base = top.pop("extends", None)
        if base is not None and (override.parent / str(base)).resolve() != path.resolve():
            raise TopologyError(f"{override}: extends = {base!r} but profile {profile!r} "
                                f"layers this file over {path}: remove extends or make "
                                "them agree")
        data = merge_layers(data, top)
        layers = (*layers, override)
    label = " + ".join(str(p) for p in layers)
    try:
        return _parse(data, str(path))
    except TopologyError as exc:
        raise TopologyError(f"{label}: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"{path}: topology file not found") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read topology file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TopologyError(f"{path}: topology file is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None


def _read_layers(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The data of ``path`` over its ``extends`` chain, and the files read (base first)."""
    if path.resolve() in (p.resolve() for p in seen):
        raise TopologyError(f"{path}: extends loops back to itself "
                            f"({' -> '.join(str(p) for p in (*seen, path))})")
    data = _read(path)
    base = data.pop("extends", None)
    if base is None:
        return data, (path,)
    if not isinstance(base, str) or not base:
        raise TopologyError(f"{path}: extends = {base!r} is invalid: expected the path of "
                            "the base topology file, relative to this one")
    below, layers = _read_layers(path.parent / base, (*seen, path))
    return merge_layers(below, data), (*layers, path)


def merge_layers(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merged key by key, ``[[shards]]`` by name, rest replaced.

    A shard of ``top`` whose ``name`` matches one of ``base`` (default names
    ``shard1``, ``shard2``... by position) is merged into it; other shards are appended.
    """
    merged: dict[str, Any] = dict(base)
    for key, value in top.items():
        old = merged.get(key)
        if key == "shards" and isinstance(old, list) and isinstance(value, list):
            merged[key] = _merge_shards(old, value)
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_layers(old, value)
        else:
            merged[key] = value
    return merged


def _merge_shards(base: list[Any], top: list[Any]) -> list[Any]:
    def name(shard: Any, index: int) -> Any:
        return shard.get("name", f"shard{index + 1}") if isinstance(shard, dict) else None

    result = [dict(s) if isinstance(s, dict) else s for s in base]
    names = [name(s, i) for i, s in enumerate(base)]
    for i, shard in enumerate(top):
        shard_name = name(shard, i)
        if shard_name is not None and shard_name in names:
            at = names.index(shard_name)
            result[at] = merge_layers(result[at], shard)
        else:
            result.append(shard)
    return result
