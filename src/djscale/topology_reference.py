"""The reference of every ``djscale.toml`` key, generated from the parser.

:func:`djscale.topology.record_keys` parses a sample topology that has every kind of
table and returns each key the parser allows, its default and what it accepts; this
module adds one sentence of meaning per key (:data:`MEANINGS`) and renders the
Markdown of ``docs/topology-reference.md``::

    python -m djscale.topology_reference > docs/topology-reference.md

A unit test fails when a parser key has no meaning here, when a meaning names no key,
or when the committed page differs from :func:`render`: the reference cannot drift.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from djscale.topology import record_keys

__all__ = ["MEANINGS", "KeyDoc", "keys", "render"]

SAMPLE: dict[str, Any] = {
    "app": {"autoscale": {}},
    "hosts": {"example": {"address": "10.0.0.1"}},
    "shards": [{"name": "example"}],
    "services": {"example": {"urls": ["http://127.0.0.1:8101"]}},
    "gateway": {
        "routes": [{"prefix": "/api/", "service": "example"}],
        "compositions": [{"path": "/c/{id}", "parts": {"part": "example:/x/{id}"}}],
    },
}
"""A topology with one table of each kind, so the parser reads every key once."""

PG = "[postgres] and each [[shards]]"

MEANINGS: dict[str, str] = {
    "extends": "path of a base topology file this one is layered over (relative to this "
               "file); see Profiles and override files",
    "hosts.<name>.address": "required: IP address of the machine",
    "hosts.<name>.netns": "local cluster only: run this host's processes in that Linux "
                          "network namespace",
    "project.name": "project name: cache key prefix, names of generated things",
    "project.pythonpath": "where the Django project lives, relative to the topology file",
    "project.settings": "DJANGO_SETTINGS_MODULE of app servers and workers",
    "project.wsgi": "the WSGI application gunicorn serves",
    "postgres.enabled": "false: djscale leaves the project's own DATABASES alone (e.g. "
                        "SQLite); replicas and shards then are an error, they need PostgreSQL",
    "postgres.database": "database name",
    "postgres.user": "role the app connects as (the local cluster's superuser)",
    "postgres.host": "where the primary listens",
    "postgres.port": "the primary's port; \"auto\": the running local cluster's",
    "postgres.replicas": "streaming replicas (local cluster: pg_basebackup -R, one slot each)",
    "postgres.replica_ports": "fixed port per replica, in order (missing ones: \"auto\")",
    "postgres.replica_hosts": "host per replica (default: the primary's host)",
    "postgres.max_lag_seconds": "replicas further behind are skipped by the router",
    "postgres.max_lag_bytes": "replicas further behind (WAL bytes) are skipped",
    "postgres.replica_policy": "how a usable replica is chosen",
    "postgres.conn_max_age": "persistent connections (CONN_MAX_AGE, seconds; 0 with pool)",
    "postgres.pool": "Django's native psycopg pool instead of persistent connections",
    "postgres.query_deadline_ms": "deadline of one statement on the primary in a request: "
                                  "past it the connection is abandoned, the request gets a "
                                  "503 (0: none; docs/reliability.md)",
    "postgres.replica_query_deadline_ms": "deadline of one statement on a replica in a "
                                          "request: past it the replica is marked down and "
                                          "a GET runs again elsewhere (0: none)",
    "postgres.replica_max_latency_ms": "a replica whose probe query answered slower than "
                                       "this in two rounds in a row gets no reads until "
                                       "it answers in time (0: never)",
    "postgres.migration_lock_timeout_ms": "lock_timeout of each statement djscale's migrate "
                                          "and migrate_shards run (main [postgres] only; "
                                          "0: none; docs/migrations.md)",
    "postgres.keepalives_idle": "libpq TCP keepalives: idle seconds before the first probe "
                                "(0: keepalives off)",
    "postgres.keepalives_interval": "libpq keepalives_interval (seconds between probes)",
    "postgres.keepalives_count": "libpq keepalives_count (lost probes before the "
                                 "connection is dead)",
    "postgres.tcp_user_timeout_ms": "libpq tcp_user_timeout: unacknowledged data gives the "
                                    "connection up after this (0: the kernel's default)",
    "postgres.password_env": "environment variable holding the password (else "
                             "$DJSCALE_DB_PASSWORD); never the password itself",
    "postgres.password_file": "file holding the password (a mounted secret); trailing "
                              "newline ignored",
    "postgres.sslmode": "libpq sslmode (empty: libpq's default, prefer)",
    "postgres.sslrootcert": "CA file to verify the server (verify-ca, verify-full)",
    "postgres.sslcert": "client certificate file",
    "postgres.sslkey": "client key file",
    "postgres.options": "other libpq parameters, e.g. { application_name = \"shop\", "
                        "target_session_attrs = \"read-write\" }",
    "postgres.ha": "\"patroni\": Patroni + etcd run the group and fail the primary over; "
                   "the app connects to every member (docs/ha.md)",
    "postgres.synchronous": "with ha: Patroni synchronous_mode + synchronous_mode_strict "
                            "(no acknowledged commit lost; needs a standby to commit)",
    "postgres.ha_ttl": "Patroni ttl: the leader key expires this many seconds after its "
                       "last renewal (failover takes about this long)",
    "postgres.ha_loop_wait": "Patroni loop_wait (seconds between HA loop runs)",
    "postgres.ha_retry_timeout": "Patroni retry_timeout (loop_wait + 2 * retry_timeout <= "
                                 "ttl)",
    "postgres.maximum_lag_on_failover": "Patroni: replicas further behind (bytes) are never "
                                        "promoted; the bound on what an asynchronous "
                                        "failover can lose",
    "shards[].name": "Django alias of the shard's primary (replicas: <name>_replicaN)",
    "redis.mode": "one Redis, or a Redis Cluster",
    "redis.host": "where Redis (single) or the local cluster's nodes listen",
    "redis.port": "Redis's port (cluster: the first node's); \"auto\": the local cluster's",
    "redis.masters": "local Redis Cluster: masters",
    "redis.replicas_per_master": "local Redis Cluster: replicas of each master",
    "redis.addresses": "an existing Redis Cluster's nodes, \"host:port\" each (cluster mode)",
    "redis.tls": "connect with TLS (rediss://)",
    "redis.ca_file": "CA file to verify the server (tls)",
    "redis.cert_file": "client certificate file (tls, with key_file)",
    "redis.key_file": "client key file (tls, with cert_file)",
    "redis.username": "Redis ACL user (empty: the default user)",
    "redis.password_env": "environment variable holding the Redis password",
    "redis.password_file": "file holding the Redis password",
    "redis.broker_host": "cluster mode: the Celery broker's Redis (default: redis.host)",
    "redis.broker_port": "cluster mode: the Celery broker's port; \"auto\": local cluster's",
    "app.servers": "gunicorn app servers",
    "app.workers": "workers per app server",
    "app.threads": "threads per worker",
    "app.host": "where the app servers listen",
    "app.hosts": "host per app server (default: app.host)",
    "app.ports": "fixed port per app server (missing ones: \"auto\")",
    "app.weights": "load-balancer weight per app server",
    "app.timeout": "gunicorn worker timeout (seconds)",
    "app.autoscale": "a table: the app server count follows the load (local autoscaler, "
                     "Kubernetes HPA); see docs/rollout.md",
    "app.autoscale.min": "fewest app servers",
    "app.autoscale.max": "most app servers",
    "app.autoscale.metric": "latency: p95 request latency; cpu: CPU use of the app servers",
    "app.autoscale.target": "p95 in ms (latency) or % of one core per worker (cpu)",
    "app.autoscale.cooldown": "seconds between two scaling actions; and that the metric "
                              "must stay low before a server is removed",
    "app.autoscale.interval": "seconds between two measurements",
    "app.autoscale.window": "seconds of requests one p95 or CPU figure covers (smooths "
                            "single slow requests; at least interval)",
    "lb.kind": "the load balancer",
    "lb.method": "balancing method",
    "lb.host": "where the load balancer listens",
    "lb.port": "the load balancer's port",
    "lb.max_fails": "failures before an app server is taken out (nginx; HAProxy fall)",
    "lb.fail_timeout": "seconds it stays out (nginx)",
    "lb.health_check_interval_ms": "HAProxy active checks of /health/ready",
    "lb.slowstart_seconds": "HAProxy slow start of a returning server",
    "edge.kind": "\"varnish\": the local cluster runs Varnish (xkey) in front of the load "
                 "balancer, VCL generated from this table (docs/edge.md)",
    "edge.host": "where the edge listens",
    "edge.port": "the edge's port",
    "edge.public_paths": "regexes of paths the app declared public: other cookies than the "
                         "session cookies are dropped there so anonymous visitors share pages",
    "edge.session_cookies": "cookies that make a request personal: passed to the app, never "
                            "served from nor stored in the cache",
    "edge.grace_seconds": "how long stale public pages are served while the app is down",
    "edge.memory_mb": "Varnish's cache size (malloc storage)",
    "edge.probe_interval_ms": "Varnish's health probe of the load balancer's /health/ready",
    "edge.threads_min": "Varnish worker threads kept ready",
    "edge.purge_from": "addresses or networks allowed to send PURGE to Varnish",
    "edge.purger": "which edge the app servers purge by tag when tagged models change",
    "edge.purge_mode": "hard: purged objects are gone; soft: served stale once while "
                       "refetched",
    "edge.purge_urls": "base URL of every Varnish to purge (empty: the local cluster's edge)",
    "edge.service_id": "Fastly service id",
    "edge.zone_id": "Cloudflare zone id",
    "edge.distribution_id": "CloudFront distribution id",
    "edge.token_env": "environment variable with the Fastly or Cloudflare API token",
    "edge.aws_key_id_env": "environment variable with the AWS access key id (CloudFront)",
    "edge.aws_secret_env": "environment variable with the AWS secret key (CloudFront)",
    "edge.api_url": "the CDN API's base URL when not its public one",
    "edge.batch_ms": "milliseconds a purge waits to gather more tags",
    "edge.retries": "extra attempts of a failed purge (exponential back-off)",
    "celery.workers": "Celery workers (celery.app required when > 0)",
    "celery.concurrency": "processes per worker",
    "celery.app": "the Celery application",
    "celery.queues": "queues the workers consume",
    "celery.relay": "run the transactional-outbox relay as a service",
    "celery.broker": "broker URL when it is not this topology's Redis (no password in it)",
    "celery.host": "where the workers run",
    "celery.hosts": "host per worker; the relay runs on the first",
    "celery.broker_password_env": "environment variable with celery.broker's password",
    "celery.broker_password_file": "file with celery.broker's password",
    "services.<name>.urls": "required: base URLs of the upstream service",
    "services.<name>.timeout": "budget of one call, retries included (seconds)",
    "services.<name>.connect_timeout": "connect timeout of one attempt (seconds)",
    "services.<name>.retries": "extra attempts, idempotent requests only",
    "services.<name>.breaker_failure_rate": "failure rate that opens the circuit breaker",
    "services.<name>.breaker_minimum_calls": "calls in the window before it may open",
    "services.<name>.breaker_window": "window of the failure rate (seconds)",
    "services.<name>.breaker_reset": "seconds before a trial call",
    "gateway.host": "where the API gateway listens",
    "gateway.port": "the gateway's port",
    "gateway.routes": "routes by path prefix",
    "gateway.compositions": "aggregated endpoints",
    "gateway.rate_limit": "requests per client per rate_window; 0: off",
    "gateway.rate_window": "rate-limit window (seconds)",
    "gateway.max_body_bytes": "largest request body accepted",
    "gateway.routes[].prefix": "requests under this path go to the service",
    "gateway.routes[].service": "the service",
    "gateway.routes[].strip_prefix": "remove the prefix before forwarding",
    "gateway.routes[].timeout": "override of the service's timeout",
    "gateway.routes[].retries": "override of the service's retries",
    "gateway.routes[].write_timeout": "timeout of requests other than GET, HEAD and OPTIONS "
                                      "(writes that wait for replicas or an edge purge)",
    "gateway.compositions[].path": "path of the aggregated endpoint, with {placeholders}",
    "gateway.compositions[].parts": "parts called concurrently",
    "gateway.compositions[].optional": "parts that become null when they fail",
    "gateway.compositions[].timeout": "budget of the whole answer",
    "pgbouncer.enabled": "PgBouncer in front of every primary",
    "pgbouncer.pool_mode": "transaction: server-side cursors and prepared statements off",
    "pgbouncer.default_pool_size": "server connections per database",
    "pgbouncer.max_client_conn": "client connections accepted",
    "pgbouncer.port": "the main group's PgBouncer port (shards': free ports)",
    "kubernetes.namespace": "namespace of the manifests (default from project.name)",
    "kubernetes.image": "the app's container image (default from project.name)",
    "kubernetes.min_replicas": "autoscaler minimum (default: app.autoscale.min, else "
                               "app.servers)",
    "kubernetes.max_replicas": "autoscaler maximum (default: app.autoscale.max, else "
                               "4 x min_replicas)",
    "kubernetes.target_cpu_percent": "autoscaler CPU target (when the HPA follows CPU)",
    "kubernetes.prometheus_adapter": "the cluster runs prometheus-adapter: with "
                                     "app.autoscale.metric = \"latency\" the HPA follows the "
                                     "p95 latency (a custom metric), else CPU",
    "kubernetes.ingress_host": "host name of the Ingress (empty: none)",
    "kubernetes.ingress_class": "IngressClass",
    "kubernetes.tls_secret": "TLS secret of the Ingress (empty: no TLS)",
    "kubernetes.db_secret": "basic-auth secret with the database user and password",
    "kubernetes.app_secret": "secret with DJANGO_SECRET_KEY",
    "kubernetes.cpu_request": "app container CPU request",
    "kubernetes.cpu_limit": "app container CPU limit",
    "kubernetes.memory_request": "app container memory request",
    "kubernetes.memory_limit": "app container memory limit",
    "kubernetes.storage_size": "database volume size",
    "kubernetes.storage_class": "database volume storage class (empty: the default)",
    "kubernetes.postgres_image": "CloudNativePG PostgreSQL image",
    "kubernetes.postgres_cpu": "database CPU",
    "kubernetes.postgres_memory": "database memory",
    "kubernetes.redis_image": "Redis image",
    "kubernetes.redis_memory": "Redis memory",
    "kubernetes.pooler_instances": "PgBouncer pooler instances",
    "sharding.logical_shards": "logical shards; never change it once data exists",
    "sharding.epoch": "custom epoch of the 64-bit ids",
    "sharding.mode": "hash of the key, or key modulo logical_shards (integer keys)",
}


@dataclass(frozen=True)
class KeyDoc:
    """One key of the reference."""

    key: str
    default: object
    allowed: str
    meaning: str


def _normalise(path: str) -> str:
    path = re.sub(r"\[\d+\]", "[]", path)
    return re.sub(r"^(hosts|services)\.example\b", r"\1.<name>", path)


def _raw_keys() -> dict[str, tuple[object, str]]:
    found: dict[str, tuple[object, str]] = {"extends": (None, "a file path")}
    for path, name, default, allowed in record_keys(SAMPLE):
        if not path:
            continue  # the top-level tables themselves
        key = f"{_normalise(path)}.{name}"
        if key not in found or (allowed and not found[key][1]):
            found[key] = (default, allowed)
    return found


def keys() -> list[KeyDoc]:
    """Every key of the topology file, in the parser's order, with its meaning."""
    docs = []
    for key, (default, allowed) in _raw_keys().items():
        meaning = MEANINGS.get(key, "")
        if not meaning and key.startswith("shards[]."):
            base = "postgres." + key.removeprefix("shards[].")
            if base in MEANINGS:
                meaning = f"as `{base}`, for this shard (default: [postgres]'s)"
        docs.append(KeyDoc(key, default, allowed, meaning))
    return docs


def _toml(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _table(key: str) -> str:
    head = key.rsplit(".", 1)[0] if "." in key else ""
    if head.endswith("[]"):
        return f"[[{head[:-2]}]]"
    return f"[{head}]" if head else "top level"


def render() -> str:
    """The Markdown of docs/topology-reference.md."""
    out = [
        "# `djscale.toml` key reference",
        "",
        "<!-- Generated by `python -m djscale.topology_reference`; do not edit by hand "
        "(tests/unit/test_topology_reference.py fails when it drifts). -->",
        "",
        "Every key the parser accepts, its default and what it allows. Unknown keys are",
        "errors. Guide and examples: [topology.md](topology.md).",
    ]
    table = None
    for doc in keys():
        if _table(doc.key) != table:
            table = _table(doc.key)
            out += ["", f"## {table}", "", "| key | default | allowed | meaning |",
                    "|---|---|---|---|"]
        cells = [f"`{doc.key}`", f"`{_toml(doc.default)}`", doc.allowed, doc.meaning]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
