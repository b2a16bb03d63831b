"""Django settings derived from the topology.

:func:`from_topology` turns a :class:`~djscale.topology.Topology` (and, for ``auto``
ports, the state file of the running local cluster) into ``DATABASES``, ``CACHES``,
``DATABASE_ROUTERS``, the session engine, the Celery broker URL and the settings read by
djscale's components. Use it at the bottom of a settings module, giving it the module's
namespace so it merges instead of replacing::

    from djscale.settings import from_topology
    globals().update(from_topology(globals()))
    # or, the same: djscale.settings.configure(globals())

With the namespace, the topology file is found next to the project (``BASE_DIR`` or the
settings module's folder, see :func:`find_topology`), the user's other ``CACHES`` aliases,
``DATABASES`` aliases and ``DATABASE_ROUTERS`` are kept, settings djscale does not own
(``SESSION_ENGINE``, ``SESSION_CACHE_ALIAS``, ``CELERY_RESULT_BACKEND``,
``CELERY_TASK_IGNORE_RESULT``) are left as the user set them, and every user value that
the topology does replace is listed in ``DJSCALE_OVERRIDDEN`` (system check
``djscale.W200``, :mod:`djscale.settings_checks`). ``globals().update(from_topology())``
still works: it returns every setting, as before.

Passwords are resolved here from the variables or files the topology names; nothing
else in djscale sees them. This module must not open connections or start anything,
and must not import the local cluster tooling (:mod:`djscale.cluster`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from djscale.errors import ConfigurationError
from djscale.localstate import STATE_FILE, LocalState, default_state_dir
from djscale.topology import AUTO, DatabaseGroup, PgBouncerSpec, Port, Topology, load

__all__ = ["TOPOLOGY_FILE", "address_variable", "configure", "database_settings",
           "find_topology", "from_topology", "redis_urls", "resolve_topology"]

TOPOLOGY_FILE = "djscale.toml"
"""Name of the topology file looked up next to the project."""

PASSWORD_VARIABLE = "DJSCALE_DB_PASSWORD"
"""Database password when the topology names neither ``password_env`` nor ``password_file``."""

# Settings a user may set themselves and from_topology() then leaves alone (with a namespace).
USER_OWNED = ("SESSION_ENGINE", "SESSION_CACHE_ALIAS", "CELERY_RESULT_BACKEND",
              "CELERY_TASK_IGNORE_RESULT", "CELERY_BROKER_TRANSPORT_OPTIONS",
              "CELERY_REDIS_SOCKET_TIMEOUT", "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT")

BROKER_SOCKET_TIMEOUT = 5.0
"""Seconds a Redis broker / result backend command may wait: kombu and Celery default to
no timeout, so a silent broker (frozen, or behind dropped packets) would hold a publish,
and the relay with it, until TCP gives up."""
BROKER_CONNECT_TIMEOUT = 2.0


def find_topology(namespace: Mapping[str, Any] | None = None) -> Path:
    """Where the topology file is: ``$DJSCALE_TOPOLOGY``, else next to the project.

    With a settings namespace: ``BASE_DIR/djscale.toml`` when ``BASE_DIR`` is set, else
    the settings module's folder or its parent (the ``startproject`` layout puts
    ``djscale.toml`` beside ``manage.py``); then ``./djscale.toml``. So
    ``python mysite/manage.py check`` works from any folder.
    """
    given = os.environ.get("DJSCALE_TOPOLOGY")
    if given:
        return Path(given)
    candidates: list[Path] = []
    ns = namespace or {}
    if ns.get("BASE_DIR"):
        candidates.append(Path(str(ns["BASE_DIR"])) / TOPOLOGY_FILE)
    elif ns.get("__file__"):
        here = Path(str(ns["__file__"])).resolve().parent
        candidates += [here / TOPOLOGY_FILE, here.parent / TOPOLOGY_FILE]
    candidates.append(Path(TOPOLOGY_FILE).absolute())   # the current folder, last
    for path in candidates:
        if path.exists():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise ConfigurationError(f"topology file not found: looked for {tried}; write one "
                             "(`djscale init`) or set DJSCALE_TOPOLOGY to its path")


def resolve_topology(topology: Topology | str | Path | None, *,
                     namespace: Mapping[str, Any] | None = None) -> Topology:
    """A Topology, a path to a file, or None for :func:`find_topology`'s file."""
    if isinstance(topology, Topology):
        return topology
    return load(topology or find_topology(namespace))


class _Addresses:
    def __init__(self, state: LocalState | None) -> None:
        self.state = state

    def get(self, service: str, host: str, port: Port, key: str) -> tuple[str, int]:
        """``(host, port)`` of ``service``; ``key`` names the topology key of its port."""
        override = os.environ.get(address_variable(service))
        if override:
            # Deployments (Kubernetes) name each service's address in the environment.
            found_host, _, found_port = override.rpartition(":")
            if not found_host or not found_port.isdigit():
                raise ConfigurationError(
                    f"{address_variable(service)} = {override!r} is invalid: expected host:port")
            return found_host, int(found_port)
        if port != AUTO:
            return host, int(port)
        found = self.state.address(service) if self.state is not None else None
        if found is None:
            where = (f"in {self.state.path}" if self.state is not None
                     else "(no local cluster state found)")
            raise ConfigurationError(
                f"{key} is \"auto\" and no running local cluster records {service} {where}: "
                f"set {key} to a fixed port (or {address_variable(service)}=host:port), "
                "or start the local cluster with `djscale cluster up`")
        return found


def address_variable(service: str) -> str:
    """The environment variable that overrides a service's address (``host:port``).

    ``pgbouncer-default`` -> ``DJSCALE_ADDR_PGBOUNCER_DEFAULT``. It wins over the topology
    and the local cluster's state; generated Kubernetes manifests set one per service.
    """
    return "DJSCALE_ADDR_" + service.upper().replace("-", "_")


def _secret(key: str, env: str, file: str, base_dir: Path | None) -> str | None:
    """The password named by ``<key>_env`` / ``<key>_file``, or None when neither is set."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigurationError(f"{key}_env = {env!r} but the environment variable "
                                     f"{env} is not set: export it (or fix the name)")
        return value
    if file:
        path = _path(file, base_dir)
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(f"{key}_file = {file!r}: cannot read {path}: "
                                     f"{exc.strerror}") from None
    return None


def _path(value: str, base_dir: Path | None) -> str:
    """A file path of the topology, relative to the topology file's folder."""
    if not value or base_dir is None or Path(value).is_absolute() or value == "system":
        return value
    return str(base_dir / value)


def _base_dir(topo: Topology) -> Path | None:
    return Path(topo.source).resolve().parent if topo.source != "<memory>" else None


def database_settings(group: DatabaseGroup, host: str, port: int, *,
                      replica_of: str | None = None,
                      pgbouncer: PgBouncerSpec | None = None,
                      key: str = "postgres",
                      base_dir: Path | None = None) -> dict[str, Any]:
    """One ``DATABASES`` entry for a member of a replication group.

    The password comes from the group's ``password_env`` / ``password_file`` (``key``
    names the group's table in errors; relative files are read from ``base_dir``), else
    from ``$DJSCALE_DB_PASSWORD``. ``sslmode``, the ssl files and ``options`` become
    libpq parameters in ``OPTIONS``.

    With ``pgbouncer`` (the entry points at a PgBouncer) in transaction mode, a client's
    consecutive transactions may run on different server connections: cursors declared
    WITH HOLD (Django's server-side cursors outside a transaction) and prepared
    statements would be lost between them, so both are turned off.
    """
    options: dict[str, Any] = {"connect_timeout": 2}
    # A dead peer across a network (dropped packets) is noticed by TCP within about
    # idle + interval * count seconds, and unacknowledged writes give up after
    # tcp_user_timeout. A frozen server on a live host is not: djscale.db.deadline bounds that.
    if group.keepalives_idle:
        options.update(keepalives=1, keepalives_idle=group.keepalives_idle,
                       keepalives_interval=group.keepalives_interval,
                       keepalives_count=group.keepalives_count)
    if group.tcp_user_timeout_ms:
        options["tcp_user_timeout"] = group.tcp_user_timeout_ms
    options.update(group.options)
    for name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = getattr(group, name)
        if value:
            options[name] = value if name == "sslmode" else _path(value, base_dir)
    if group.pool:
        options["pool"] = {"min_size": 1, "max_size": 8, "timeout": 5}
    password = _secret(f"{key}.password", group.password_env, group.password_file, base_dir)
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": group.database,
        "USER": group.user,
        "PASSWORD": password if password is not None else os.environ.get(PASSWORD_VARIABLE, ""),
        "HOST": host,
        "PORT": str(port),
        "CONN_MAX_AGE": 0 if group.pool else group.conn_max_age,
        # With a pool, Django (5.1+) turns this into psycopg_pool's check at checkout:
        # without it every connection idle in the pool across a database restart would
        # fail the request that takes it next.
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
        "TEST": {"NAME": f"test_{group.database}"},
    }
    if replica_of is not None:
        # Django's test runner must not create a test database on a replica: it reads the
        # primary's test database through streaming replication.
        entry["TEST"] = {"MIRROR": replica_of}
    if pgbouncer is not None and pgbouncer.pool_mode == "transaction":
        entry["DISABLE_SERVER_SIDE_CURSORS"] = True
        options["prepare_threshold"] = None
    return entry


def _patroni_databases(group: DatabaseGroup, addr: _Addresses, *, key: str,
                       base_dir: Path | None) -> dict[str, dict[str, Any]]:
    """The ``DATABASES`` entries of a group whose primary Patroni elects (``ha``).

    Any node may lead, so every alias lists every node (libpq multi-host ``HOST``/``PORT``)
    and lets libpq pick by role at connect time: the primary alias with
    ``target_session_attrs=read-write`` (the leader, whichever node it is now; during an
    election no node qualifies and the connect fails at once, a 503), replica ``i`` with
    ``prefer-standby`` over the list rotated to start at node ``i + 1``, so replicas
    spread over the standbys and a read still succeeds on the leader when no standby runs.
    """
    nodes = [addr.get(f"pg-{group.name}", group.host, group.port, f"{key}.port")]
    for i, alias in enumerate(group.replica_aliases):
        configured = group.replica_ports[i] if i < len(group.replica_ports) else AUTO
        nodes.append(addr.get(f"pg-{alias.replace('_', '-')}", group.replica_host(i),
                              configured, f"{key}.replica_ports[{i}]"))

    def entry(order: list[tuple[str, int]], attrs: str,
              replica_of: str | None = None) -> dict[str, Any]:
        found = database_settings(group, order[0][0], order[0][1], key=key,
                                  base_dir=base_dir, replica_of=replica_of)
        found["HOST"] = ",".join(h for h, _ in order)
        found["PORT"] = ",".join(str(p) for _, p in order)
        found["OPTIONS"].setdefault("target_session_attrs", attrs)
        return found

    databases = {group.name: entry(nodes, "read-write")}
    for i, alias in enumerate(group.replica_aliases):
        start = (i + 1) % len(nodes)
        databases[alias] = entry(nodes[start:] + nodes[:start], "prefer-standby",
                                 replica_of=group.name)
    return databases


def _state(state_dir: str | Path | None, topo: Topology) -> LocalState | None:
    """The local cluster's state: ``state_dir``, the default, or beside the topology."""
    if state_dir is not None:
        candidates = [Path(state_dir)]
    else:
        candidates = [default_state_dir()]
        base = _base_dir(topo)
        if base is not None and "DJSCALE_STATE_DIR" not in os.environ:
            candidates.append(base / ".djscale")
    for sdir in candidates:
        if (sdir / STATE_FILE).exists():
            return LocalState.read(sdir)
    return None


def configure(namespace: MutableMapping[str, Any], topology: Topology | str | Path | None = None,
              *, state_dir: str | Path | None = None) -> None:
    """Merge the topology's settings into a settings module's namespace, in place.

    ``djscale.settings.configure(globals())`` is ``globals().update(from_topology(globals()))``.
    """
    namespace.update(from_topology(topology, namespace=namespace, state_dir=state_dir))


def from_topology(topology: Topology | str | Path | Mapping[str, Any] | None = None, *,
                  namespace: Mapping[str, Any] | None = None,
                  state_dir: str | Path | None = None) -> dict[str, Any]:
    """Return Django settings for the topology's databases, caches, routers and broker.

    Call it as ``from_topology(globals())`` (or ``namespace=globals()``) from a settings
    module: the result then merges with the settings already there (module docstring)
    and the topology file is found next to the project (:func:`find_topology`). A
    :class:`Topology` or a path may be given as the first argument instead.

    ``auto`` ports are resolved from the local cluster's state in ``state_dir`` (default
    ``$DJSCALE_STATE_DIR``, ``./.djscale``, or ``.djscale`` beside the topology file);
    fixed ports are used as they are. Raise :class:`~djscale.errors.ConfigurationError`
    (one line, naming the key) when an address or a password cannot be resolved.
    """
    given: Topology | str | Path | None
    if isinstance(topology, Mapping):
        namespace, given = topology, None
    else:
        given = topology
    # Without a namespace, still find the file next to the calling settings module.
    near = namespace if namespace is not None else sys._getframe(1).f_globals
    topo = resolve_topology(given, namespace=near)
    derived = _settings(topo, _Addresses(_state(state_dir, topo)))
    if not topo.postgres.enabled:
        del derived["DATABASES"]   # postgres.enabled = false: the project's own databases
    if namespace is None:
        derived["DJSCALE_OVERRIDDEN"] = []
        return derived
    return _merge(namespace, derived)


def _settings(topo: Topology, addr: _Addresses) -> dict[str, Any]:
    base_dir = _base_dir(topo)
    databases: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    groups_of = topo.database_groups if topo.postgres.enabled else ()
    for index, group in enumerate(groups_of):
        key = "postgres" if index == 0 else f"shards[{index - 1}]"
        if topo.pgbouncer.enabled:
            bport: Port = topo.pgbouncer.port if group is topo.postgres else AUTO
            host, port = addr.get(f"pgbouncer-{group.name}", group.host, bport,
                                  "pgbouncer.port" if index == 0 else f"{key} (PgBouncer)")
            databases[group.name] = database_settings(group, host, port, key=key,
                                                      pgbouncer=topo.pgbouncer,
                                                      base_dir=base_dir)
        elif group.ha == "patroni":
            databases.update(_patroni_databases(group, addr, key=key, base_dir=base_dir))
        else:
            host, port = addr.get(f"pg-{group.name}", group.host, group.port, f"{key}.port")
            databases[group.name] = database_settings(group, host, port, key=key,
                                                      base_dir=base_dir)
        for i, alias in enumerate(group.replica_aliases if group.ha != "patroni" else ()):
            configured = group.replica_ports[i] if i < len(group.replica_ports) else AUTO
            rhost, rport = addr.get(f"pg-{alias.replace('_', '-')}", group.replica_host(i),
                                    configured, f"{key}.replica_ports[{i}]")
            databases[alias] = database_settings(group, rhost, rport, replica_of=group.name,
                                                 key=key, base_dir=base_dir)
        groups[group.name] = {
            "PRIMARY": group.name,
            "REPLICAS": list(group.replica_aliases),
            "MAX_LAG_SECONDS": group.max_lag_seconds,
            "MAX_LAG_BYTES": group.max_lag_bytes,
            "POLICY": group.replica_policy,
            "QUERY_DEADLINE_MS": group.query_deadline_ms,
            "REPLICA_QUERY_DEADLINE_MS": group.replica_query_deadline_ms,
            "REPLICA_MAX_LATENCY_MS": group.replica_max_latency_ms,
        }

    redis_urls, broker_url, connection = _redis(topo, addr)
    cache_location: str | list[str] = redis_urls if len(redis_urls) > 1 else redis_urls[0]
    cluster = topo.redis.mode == "cluster"
    cache_options: dict[str, Any] = {"CLUSTER": cluster}
    if connection:
        # Credentials and TLS files stay out of LOCATION (it labels metrics and logs).
        cache_options["CONNECTION_KWARGS"] = connection
    caches = {
        # In-process L1 over Redis L2, invalidated across processes (docs/cache.md).
        "default": {
            "BACKEND": "djscale.cache.TieredCache",
            "LOCATION": cache_location,
            "KEY_PREFIX": topo.project.name,
            "OPTIONS": dict(cache_options),
        },
        # Sessions: Redis only (no L1, every app server sees the same session at once),
        # backed by the database (djscale.sessions, Django's cached_db plus failover-safe
        # cache writes and primary reads on a miss) so a Redis restart, outage or
        # failover logs nobody out and a lagging replica never serves an old session.
        "sessions": {
            "BACKEND": "djscale.cache.TieredCache",
            "LOCATION": cache_location,
            "KEY_PREFIX": f"{topo.project.name}:sess",
            "OPTIONS": {**cache_options, "L1_MAX_ENTRIES": 0},
        },
    }

    return {
        "DATABASES": databases,
        "DATABASE_ROUTERS": (["djscale.sharding.router.ShardRouter"] if topo.shards else [])
        + ["djscale.db.routers.PrimaryReplicaRouter"],
        "CACHES": caches,
        "SESSION_ENGINE": "djscale.sessions",
        "SESSION_CACHE_ALIAS": "sessions",
        "CELERY_BROKER_URL": broker_url,
        # djscale.events confirms each delivery by its task result, stored in the broker's
        # Redis (so every service on one event broker sees the same results); other tasks
        # keep ignoring their results, as they did without a backend. A namespace given
        # to from_topology() that sets either keeps its own value.
        "CELERY_RESULT_BACKEND": (broker_url if broker_url.startswith(("redis://", "rediss://"))
                                  else None),
        "CELERY_TASK_IGNORE_RESULT": True,
        **({"CELERY_BROKER_TRANSPORT_OPTIONS": {
                "socket_timeout": BROKER_SOCKET_TIMEOUT,
                "socket_connect_timeout": BROKER_CONNECT_TIMEOUT},
            "CELERY_REDIS_SOCKET_TIMEOUT": BROKER_SOCKET_TIMEOUT,
            "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT": BROKER_CONNECT_TIMEOUT}
           if broker_url.startswith(("redis://", "rediss://")) else {}),
        # djscale.conf merges the project's own DJSCALE over this (the project wins per
        # key), so DJSCALE = {...} may come before or after from_topology().
        "DJSCALE_DERIVED": {
            "TOPOLOGY": topo.source,
            "CELERY_APP": topo.celery.app,
            "REPLICATION_GROUPS": groups,
            "SHARDING": {
                "ALIASES": [s.name for s in topo.shards],
                "LOGICAL_SHARDS": topo.sharding.logical_shards,
                "EPOCH_MS": topo.sharding.epoch_ms,
                "MODE": topo.sharding.mode,
                "MAP_ALIAS": topo.postgres.name,
                "MAP_TTL_SECONDS": 1.0,
            },
            "MIGRATIONS": {"LOCK_TIMEOUT_MS": topo.postgres.migration_lock_timeout_ms},
            "REDIS_MODE": topo.redis.mode,
            "REDIS_URLS": redis_urls,
            "TRUSTED_PROXIES": [topo.lb.host],
            "APP_SERVERS": topo.app.servers,
            "PGBOUNCER": topo.pgbouncer.pool_mode if topo.pgbouncer.enabled else None,
            "EDGE": {
                "PURGER": topo.edge.purger,
                "PURGE_MODE": topo.edge.purge_mode,
                "PURGE_URLS": list(topo.edge.purge_urls),
                "SERVICE_ID": topo.edge.service_id,
                "ZONE_ID": topo.edge.zone_id,
                "DISTRIBUTION_ID": topo.edge.distribution_id,
                "TOKEN_ENV": topo.edge.token_env,
                "AWS_KEY_ID_ENV": topo.edge.aws_key_id_env,
                "AWS_SECRET_ENV": topo.edge.aws_secret_env,
                "API_URL": topo.edge.api_url,
                "BATCH_MS": topo.edge.batch_ms,
                "RETRIES": topo.edge.retries,
            },
            "SERVICES": {
                svc.name: {
                    "URLS": list(svc.urls),
                    "TIMEOUT": svc.timeout,
                    "CONNECT_TIMEOUT": svc.connect_timeout,
                    "RETRIES": svc.retries,
                    "BREAKER": {
                        "FAILURE_RATE": svc.breaker_failure_rate,
                        "MINIMUM_CALLS": svc.breaker_minimum_calls,
                        "WINDOW": svc.breaker_window,
                        "RESET": svc.breaker_reset,
                    },
                }
                for svc in topo.services
            },
        },
    }


def _merge(namespace: Mapping[str, Any], derived: dict[str, Any]) -> dict[str, Any]:
    """``derived`` merged with the user's settings; overrides listed in DJSCALE_OVERRIDDEN."""
    overridden: list[dict[str, str]] = []
    result = dict(derived)

    def record(setting: str, was: str, now: str) -> None:
        overridden.append({"setting": setting, "was": was, "now": now})

    if "DATABASES" in derived:
        user_dbs: Mapping[str, Any] = namespace.get("DATABASES") or {}
        for alias, entry in derived["DATABASES"].items():
            old = user_dbs.get(alias)
            if isinstance(old, Mapping) and _describe_db(old) != _describe_db(entry):
                record(f"DATABASES[{alias!r}]", _describe_db(old), _describe_db(entry))
        result["DATABASES"] = {**user_dbs, **derived["DATABASES"]}

    user_routers = list(namespace.get("DATABASE_ROUTERS") or [])
    result["DATABASE_ROUTERS"] = user_routers + [
        r for r in derived["DATABASE_ROUTERS"] if r not in user_routers]

    user_caches: Mapping[str, Any] = namespace.get("CACHES") or {}
    for alias, entry in derived["CACHES"].items():
        old = user_caches.get(alias)
        if isinstance(old, Mapping) and _describe_cache(old) != _describe_cache(entry):
            record(f"CACHES[{alias!r}]", _describe_cache(old), _describe_cache(entry))
    result["CACHES"] = {**user_caches, **derived["CACHES"]}

    broker = namespace.get("CELERY_BROKER_URL")
    if broker and broker != derived["CELERY_BROKER_URL"]:
        record("CELERY_BROKER_URL", _redact(str(broker)), _redact(derived["CELERY_BROKER_URL"]))

    # The user's choices djscale does not own: kept as they are, with no warning.
    if "SESSION_ENGINE" in namespace:
        for name in ("SESSION_ENGINE", "SESSION_CACHE_ALIAS"):
            result.pop(name, None)
    for name in USER_OWNED:
        if name in namespace:
            result.pop(name, None)
    result["DJSCALE_OVERRIDDEN"] = overridden
    return result


def _describe_db(entry: Mapping[str, Any]) -> str:
    engine = str(entry.get("ENGINE", "")).rsplit(".", 1)[-1]
    where = f" at {entry.get('HOST')}:{entry.get('PORT')}" if entry.get("HOST") else ""
    return f"{engine} {entry.get('NAME', '')}{where}"


def _describe_cache(entry: Mapping[str, Any]) -> str:
    location = entry.get("LOCATION", "")
    if isinstance(location, list | tuple):
        location = ",".join(str(x) for x in location)
    return f"{entry.get('BACKEND', '')} {_redact(str(location))}".strip()


def _redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def redis_urls(topology: Topology | str | Path | None = None, *,
               state_dir: str | Path | None = None) -> list[str]:
    """The topology's Redis URLs with credentials and TLS parameters, ``auto`` resolved.

    For processes that need Redis but no database and build clients from URLs (the API
    gateway's rate limiter).
    """
    topo = resolve_topology(topology)
    urls, _, connection = _redis(topo, _Addresses(_state(state_dir, topo)))
    return [_with_credentials(url, connection) for url in urls]


def _with_credentials(url: str, connection: Mapping[str, Any]) -> str:
    """``url`` with the user, password and TLS parameters of ``connection`` in it."""
    scheme, _, rest = url.partition("://")
    user, password = connection.get("username"), connection.get("password")
    if user or password is not None:
        auth = quote(str(user or ""), safe="")
        if password is not None:
            auth += ":" + quote(str(password), safe="")
        rest = f"{auth}@{rest}"
    query = {k: v for k, v in connection.items() if k.startswith("ssl_")}
    return f"{scheme}://{rest}" + (f"?{urlencode(query)}" if query else "")


def _redis(topo: Topology, addr: _Addresses) -> tuple[list[str], str, dict[str, Any]]:
    """Clean node URLs, the broker URL (credentials in it) and the connection kwargs."""
    spec = topo.redis
    base_dir = _base_dir(topo)
    password = _secret("redis.password", spec.password_env, spec.password_file, base_dir)
    scheme = "rediss" if spec.tls else "redis"
    connection: dict[str, Any] = {}
    if spec.username:
        connection["username"] = spec.username
    if password is not None:
        connection["password"] = password
    if spec.tls:
        connection["ssl_cert_reqs"] = "required"
        for key, name in (("ssl_ca_certs", "ca_file"), ("ssl_certfile", "cert_file"),
                          ("ssl_keyfile", "key_file")):
            if getattr(spec, name):
                connection[key] = _path(getattr(spec, name), base_dir)
    broker = ""
    if spec.mode == "single":
        host, port = addr.get("redis", spec.host, spec.port, "redis.port")
        urls = [f"{scheme}://{host}:{port}/0"]
        broker = _with_credentials(f"{scheme}://{host}:{port}/1", connection)
    else:
        nodes = list(spec.addresses)
        if not nodes:
            for i in range(1, spec.nodes + 1):
                port_i: Port = spec.port if (i == 1 and spec.port != AUTO) else AUTO
                nodes.append(addr.get(f"redis-{i}", spec.host, port_i,
                                      "redis.port" if i == 1 else "redis.addresses"))
        urls = [f"{scheme}://{host}:{port}" for host, port in nodes]
        if topo.celery.workers or spec.broker_port != AUTO:
            host, port = addr.get("redis-broker", spec.broker_host or spec.host,
                                  spec.broker_port, "redis.broker_port")
            broker = _with_credentials(f"{scheme}://{host}:{port}/0", connection)
    if topo.celery.broker:
        secret = _secret("celery.broker_password", topo.celery.broker_password_env,
                         topo.celery.broker_password_file, base_dir)
        broker = topo.celery.broker
        if secret is not None:
            scheme_, _, rest = broker.partition("://")
            user, at, hostpart = rest.rpartition("@")
            broker = f"{scheme_}://{user if at else ''}:{quote(secret, safe='')}@{hostpart}"
    return urls, broker, connection
