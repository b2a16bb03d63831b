"""The live dashboard of a local cluster: one web page, one JSON endpoint, no dependencies.

Run by the local cluster as the ``dashboard`` part
(``python -m djscale.cluster.dashboard --state-dir DIR --port P``). A background
:class:`Collector` reads ``cluster.json`` once a second, probes every recorded service in
parallel and keeps one snapshot; the HTTP server answers

- ``/``            the page (``dashboard_assets/index.html``: inline SVG, CSS and JS, so it
                   works offline), which polls ``/api/state`` every second;
- ``/api/state``   the latest snapshot as JSON;
- ``/metrics``     the edge cache's counters in Prometheus text (none without an edge);
- ``/health/live`` 200 while the server runs (the cluster's readiness probe).

What a snapshot holds, and where it comes from:

- health of each service: process alive + a protocol probe (SQL, PING, HTTP);
- replica lag in bytes and seconds: djscale's one measure (:mod:`djscale.db.lag`, the
  router's and ``/health/ready``'s), from the primary's ``pg_current_wal_lsn()`` and the
  replica's replay position, bounded by the primary's positions of earlier rounds
  (primaries and replicas are probed in parallel in one round);
- requests/s per app server, from the first source that answers: a request counter on the
  app server's ``/metrics`` (Prometheus text), HAProxy's stats socket (``stot`` per server),
  or request lines in the gunicorn access log (``DJSCALE_ACCESS_LOG=1``); else ``null``;
- cache hit ratio from Redis ``INFO stats`` (``keyspace_hits`` / ``keyspace_misses``);
- the edge cache (``[edge] kind = "varnish"``): hit ratio, passes, grace hits and purges
  from ``varnishstat`` (:func:`djscale.cluster.varnish.edge_stats`), since it started and
  over the last round; ``/metrics`` exports the same counters for Prometheus
  (``djscale_edge_cache_*``), as a Varnish exporter would;
- size of each primary's database (``pg_database_size``);
- outbox backlog: unpublished rows of any table named like ``%outbox%`` (``null`` when
  there is none).

The dashboard only reads: it never changes a service, and a probe that fails makes that
service "down" in the snapshot, never an error page. The collector is written by hand
because it needs nothing beyond the clients djscale already uses (psycopg, redis-py,
http.client); the server is the standard library's, enough for one page on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from djscale.cluster import ha, varnish
from djscale.cluster.state import ClusterState, default_state_dir
from djscale.cluster.supervisor import ManagedProcess, tcp_ready
from djscale.db import lag
from djscale.topology import DatabaseGroup, Topology, load

__all__ = [
    "Collector",
    "DashboardServer",
    "count_access_lines",
    "edge_metrics",
    "haproxy_server_totals",
    "main",
    "metrics_request_total",
    "page",
]

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
PROBE_TIMEOUT = 2.5
"""Seconds one round waits for the probes of all services."""

# Known request counters, most specific first (djscale.metrics exposes the first); any
# other counter family whose name holds "http_requests" is used when none of these is.
_KNOWN_COUNTERS = (
    "djscale_http_requests",
    "django_http_requests_total_by_method",
    "django_http_requests_total_by_view_transport_method",
    "http_requests",
)

# A gunicorn access-log line in its default format: ... [date] "GET /path HTTP/1.1" 200 ...
_ACCESS_RE = re.compile(rb'\] "([A-Z]+) (\S+) HTTP/[0-9.]+" \d{3} ')

# Columns that tell whether an outbox row was published, and the condition for "not yet".
_OUTBOX_PENDING = (
    ("published_at", "{col} IS NULL"),
    ("sent_at", "{col} IS NULL"),
    ("relayed_at", "{col} IS NULL"),
    ("dispatched_at", "{col} IS NULL"),
    ("processed_at", "{col} IS NULL"),
    ("published", "NOT {col}"),
    ("sent", "NOT {col}"),
)


def page() -> bytes:
    """The dashboard page (HTML with inline CSS and JS)."""
    asset = resources.files("djscale.cluster").joinpath("dashboard_assets/index.html")
    return asset.read_bytes()


# ---------------------------------------------------------------------- pure parsers


def metrics_request_total(text: str) -> float | None:
    """Total of the HTTP request counter in Prometheus exposition ``text`` (None if absent).

    Samples of the chosen counter family are summed over all labels, except those of
    djscale's own endpoints (``view`` label ``djscale-metrics`` or ``djscale-health-*``: the
    dashboard's scrapes and routed health checks); ``_created`` samples are ignored. Text
    that does not parse counts as "no counter".
    """
    try:
        families = list(text_string_to_metric_families(text))
    except Exception:  # noqa: BLE001 - whatever the app serves, it is not our counter
        return None
    counters = {f.name: f for f in families if f.type == "counter"}

    def total(name: str) -> float:
        return sum(s.value for s in counters[name].samples
                   if s.name.endswith("_total") and not _own_view(s.labels.get("view", "")))

    for name in _KNOWN_COUNTERS:
        if name in counters:
            return total(name)
    for name in sorted(counters):
        if "http_requests" in name:
            return total(name)
    return None


def _own_view(view: str) -> bool:
    return view == "djscale-metrics" or view.startswith("djscale-health")


def haproxy_server_totals(csv_text: str, backend: str = "djscale_app") -> dict[str, int]:
    """``{server: stot}`` of ``backend`` from HAProxy's ``show stat`` CSV output."""
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("#"):
        return {}
    header = lines[0].lstrip("# ").split(",")
    try:
        px, sv, stot = header.index("pxname"), header.index("svname"), header.index("stot")
    except ValueError:
        return {}
    totals = {}
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) <= stot or cells[px] != backend or cells[sv] in ("FRONTEND", "BACKEND"):
            continue
        with contextlib.suppress(ValueError):
            totals[cells[sv]] = int(cells[stot] or 0)
    return totals


def count_access_lines(data: bytes) -> int:
    """Number of gunicorn access-log request lines in ``data``.

    Health checks and ``/metrics`` scrapes (the dashboard's and the load balancer's own
    requests) are not counted.
    """
    return sum(1 for m in _ACCESS_RE.finditer(data)
               if not m.group(2).startswith((b"/health/", b"/metrics")))


# ---------------------------------------------------------------------- probes


def _pg(rec: Mapping[str, Any], *, bouncer: bool = False) -> psycopg.Connection[Any]:
    extra = rec.get("extra") or {}
    # PgBouncer refuses startup parameters it does not know, such as ``options``.
    options: dict[str, Any] = {} if bouncer else {"options": "-c statement_timeout=1000"}
    return psycopg.connect(host=rec["host"], port=rec["port"], user=extra.get("user", "postgres"),
                           dbname=extra.get("database", "postgres"), connect_timeout=1,
                           autocommit=True, **options)


def _http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        return resp.status, resp.read(4 * 1024 * 1024)
    finally:
        conn.close()


def _outbox(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    tables = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name ILIKE '%outbox%' AND table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
    ).fetchall()
    found = []
    for schema, table in tables:
        columns = {r[0]: r[1] for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s", (schema, table)).fetchall()}
        condition: sql.Composable = sql.SQL("TRUE")
        rule = "every row (the relay deletes what it published)"
        for column, template in _OUTBOX_PENDING:
            if column in columns:
                condition = sql.SQL(template).format(col=sql.Identifier(column))
                rule = template.format(col=column)
                break
        query = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}").format(
            sql.Identifier(schema), sql.Identifier(table), condition)
        row = conn.execute(query).fetchone()
        found.append({"table": f"{schema}.{table}", "backlog": int(row[0]) if row else 0,
                      "counts": rule})
    return found


class Collector:
    """Probe the services recorded under ``state_dir`` and keep the latest snapshot."""

    def __init__(self, *, state_dir: Path, interval: float = 1.0) -> None:
        self.state_dir = state_dir
        self.interval = interval
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"services": [], "generated_at": None,
                                          "collecting": True}
        self._previous: dict[str, tuple[float, float]] = {}
        self._log_offsets: dict[str, tuple[int, int]] = {}
        self._no_metrics_until: dict[str, float] = {}
        self._inflight: dict[str, Future[dict[str, Any]]] = {}
        self._topology: Topology | None = None
        self._histories: dict[str, lag.PrimaryHistory] = {}
        self._topology_source = ""
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")

    # ------------------------------------------------------------------ public

    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot (a JSON-serialisable dict)."""
        with self._lock:
            return self._snapshot

    def run_forever(self, stop: threading.Event) -> None:
        """Collect every ``interval`` seconds until ``stop`` is set; never raises."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                snap = self.collect()
            except Exception:  # noqa: BLE001 - the page shows the last good snapshot
                traceback.print_exc()
            else:
                with self._lock:
                    self._snapshot = snap
            stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def collect(self) -> dict[str, Any]:
        """Probe every recorded service once and return a snapshot."""
        state = ClusterState.read(self.state_dir)
        topo = self._load_topology(state.topology)
        records = [dict(r) for r in state.services.values()]
        groups = {g.name: g for g in topo.database_groups} if topo else {}
        main_group = topo.postgres.name if topo else "default"
        lb = next((r for r in records if r.get("name") == "lb"), None)
        haproxy = self._haproxy_totals(lb) if lb and lb.get("kind") == "haproxy" else {}

        started = time.monotonic()
        probes = self._probe_all(records, groups)
        now = time.monotonic()
        services, replicas, apps, caches, databases, outbox = [], [], [], [], [], []
        edges = []
        primary_lsns: dict[str, int | None] = {}
        for rec, probe in zip(records, probes, strict=True):
            if rec.get("kind") == "postgres" and rec.get("role") == "primary":
                group_name = rec.get("group", "")
                wal_lsn = primary_lsns[group_name] = probe.pop("wal_lsn", None)
                if wal_lsn is not None:
                    # Measured at or after ``started``: an upper bound stays one.
                    self._history(group_name).record(wal_lsn, started)
        for rec, probe in zip(records, probes, strict=True):
            name, kind, role = rec.get("name", "?"), rec.get("kind", ""), rec.get("role", "")
            group = rec.get("group", "")
            if kind == "postgres" and role == "replica":
                self._replica_lag(probe, groups.get(group), primary_lsns.get(group), group,
                                  now)
                replicas.append({"name": name, "group": group, "primary": f"pg-{group}",
                                 **{k: probe.get(k) for k in (
                                     "lag_bytes", "lag_seconds", "max_lag_bytes",
                                     "max_lag_seconds")}, "health": probe["health"]})
            if kind == "postgres" and role == "primary":
                databases.append({"name": name, "group": group,
                                  "role": "primary" if group == main_group else "shard",
                                  "database": (rec.get("extra") or {}).get("database", ""),
                                  "size_bytes": probe.get("size_bytes"),
                                  "health": probe["health"]})
                outbox.append({"name": name, "tables": probe.get("outbox"),
                               "backlog": _sum_backlog(probe.get("outbox"))})
            if kind == "redis":
                caches.append(self._cache_row(name, role, probe, now))
            if kind == "gunicorn":
                apps.append(self._app_row(rec, probe, haproxy, now))
            if kind == "varnish":
                edges.append(self._edge_row(name, probe, now))
            services.append({
                "name": name, "kind": kind, "role": role, "group": group,
                "address": f"{rec.get('host')}:{rec.get('port')}" if rec.get("port") else "",
                "pid": rec.get("pid") or 0, "running": probe["running"],
                "health": probe["health"], "detail": probe.get("detail", ""),
                # What the watchdog noted (djscale.cluster.watchdog): restarts, crash loop.
                "restarts": (rec.get("supervision") or {}).get("restarts", 0),
                "supervision": (rec.get("supervision") or {}).get("state", "")
                if rec.get("restart") else "",
                "last_exit": (rec.get("supervision") or {}).get("last_exit", ""),
            })
        backlog_known = [o["backlog"] for o in outbox if o["backlog"] is not None]
        return {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "interval": self.interval,
            "cluster": {"name": topo.project.name if topo else "",
                        "state_dir": str(self.state_dir), "topology": state.topology,
                        "lb_kind": lb.get("kind") if lb else None},
            "services": services, "replicas": replicas, "apps": apps, "caches": caches,
            "edges": edges,
            "databases": databases, "outbox": outbox,
            "outbox_backlog": sum(backlog_known) if backlog_known else None,
        }

    # ------------------------------------------------------------------ probes

    def _load_topology(self, source: str) -> Topology | None:
        if source != self._topology_source:
            self._topology_source = source
            try:
                self._topology = load(source) if source and source != "<memory>" else None
            except Exception:  # noqa: BLE001 - thresholds fall back to "unknown"
                self._topology = None
        return self._topology

    def _probe_all(self, records: Sequence[dict[str, Any]],
                   groups: Mapping[str, DatabaseGroup]) -> list[dict[str, Any]]:
        """Probe every service in parallel; a probe still running after the timeout is "down".

        A hung server (e.g. stopped with SIGSTOP after accepting the connection) can block a
        probe past its socket timeouts; such a probe is not started again until it returns,
        so hung services never use up the pool.
        """
        futures = []
        for rec in records:
            name = str(rec.get("name"))
            running = self._inflight.get(name)
            if running is None or running.done():
                running = self._pool.submit(self._probe, rec, groups)
                self._inflight[name] = running
            futures.append(running)
        wait(futures, timeout=PROBE_TIMEOUT)
        results = []
        for future in futures:
            if future.done() and future.exception() is None:
                results.append(future.result())
            elif future.done():
                results.append({"running": True, "health": DOWN, "detail": "probe failed: "
                                f"{type(future.exception()).__name__}"})
            else:
                results.append({"running": True, "health": DOWN,
                                "detail": f"no answer within {PROBE_TIMEOUT:g} s"})
        return results

    def _probe(self, rec: dict[str, Any], groups: Mapping[str, DatabaseGroup]) -> dict[str, Any]:
        try:
            proc = ManagedProcess.from_record(rec)
            running = proc.alive()
        except Exception:  # noqa: BLE001 - a record we cannot read is a service we cannot see
            return {"running": False, "health": DOWN, "detail": "unreadable record"}
        if not running:
            return {"running": False, "health": DOWN, "detail": "stopped"}
        try:
            result = self._probe_kind(rec, groups)
        except Exception as exc:  # noqa: BLE001 - a failed probe means "down"
            result = {"health": DOWN, "detail": f"probe failed: {type(exc).__name__}"}
        return {"running": True, **result}

    def _probe_kind(self, rec: dict[str, Any],
                    groups: Mapping[str, DatabaseGroup]) -> dict[str, Any]:
        kind, role = rec.get("kind"), rec.get("role")
        host, port = rec.get("host", "127.0.0.1"), int(rec.get("port") or 0)
        if kind == "postgres" and role == "replica":
            with _pg(rec) as conn:
                position = lag.read_replica(conn.cursor())
            return {"health": HEALTHY if position.in_recovery else DEGRADED,
                    "detail": "streaming" if position.in_recovery
                    else "not in recovery (promoted?)",
                    "position": position}
        if kind == "postgres":
            with _pg(rec) as conn:
                wal_lsn = lag.read_primary(conn.cursor())
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                try:
                    outbox: list[dict[str, Any]] | None = _outbox(conn)
                except psycopg.Error:
                    outbox = None
            return {"health": HEALTHY, "detail": role or "primary",
                    "size_bytes": int(size[0]) if size else None, "wal_lsn": wal_lsn,
                    "outbox": outbox}
        if kind == "redis":
            client = redis.Redis(host=host, port=port, socket_timeout=1,
                                 socket_connect_timeout=1)
            try:
                stats = client.info("stats")
                memory = client.info("memory")
            finally:
                client.close()
            return {"health": HEALTHY, "detail": role or "cache",
                    "hits": int(stats.get("keyspace_hits", 0)),
                    "misses": int(stats.get("keyspace_misses", 0)),
                    "ops_per_second": stats.get("instantaneous_ops_per_sec"),
                    "memory": memory.get("used_memory_human")}
        if kind == "gunicorn":
            name = str(rec.get("name"))
            metrics = None
            status = 0
            if self._no_metrics_until.get(name, 0.0) < time.monotonic():
                status, body = _http_get(host, port, "/metrics")
                if status == 200:
                    metrics = metrics_request_total(body.decode("utf-8", "replace"))
                if metrics is None:  # ask again later, not every second
                    self._no_metrics_until[name] = time.monotonic() + 30
            if metrics is None:
                status, _ = _http_get(host, port, "/health/live")
            ok = status < 500
            return {"health": HEALTHY if ok else DOWN, "detail": f"HTTP {status}",
                    "metrics_total": metrics}
        if kind == "varnish":
            edge = varnish.edge_stats(str(rec.get("data_dir") or ""))
            return {"health": HEALTHY, "detail": edge.summary(), "edge": edge}
        if kind in ha.KINDS:
            # A Patroni member: its role, timeline and lag as Patroni reports them.
            ok, detail = ha.probe(ManagedProcess.from_record(rec))
            return {"health": HEALTHY if ok else DEGRADED, "detail": detail}
        if kind == "pgbouncer":
            with _pg(rec, bouncer=True) as conn:
                conn.execute("SELECT 1")
            return {"health": HEALTHY, "detail": f"pooling for {rec.get('group') or '?'}"}
        if kind in ("nginx", "haproxy"):
            # Not an HTTP request: it would reach an app server and count as traffic there.
            ok = tcp_ready(host, port, timeout=1.0)
            return {"health": HEALTHY if ok else DOWN,
                    "detail": "accepting connections" if ok else "not accepting connections"}
        if kind == "dashboard":
            status, _ = _http_get(host, port, "/health/live")
            return {"health": HEALTHY if status < 500 else DOWN, "detail": f"HTTP {status}"}
        if port:
            ok = tcp_ready(host, port)
            return {"health": HEALTHY if ok else DOWN, "detail": "accepting" if ok else
                    "not accepting connections"}
        return {"health": HEALTHY, "detail": "running"}

    def _haproxy_totals(self, lb: Mapping[str, Any]) -> dict[str, int]:
        config = (lb.get("extra") or {}).get("config")
        if not config or not lb.get("pid"):
            return {}
        sock_path = Path(config).parent / "haproxy.sock"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(sock_path))
                sock.sendall(b"show stat\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return {}
        return haproxy_server_totals(b"".join(chunks).decode("utf-8", "replace"))

    def _history(self, group: str) -> lag.PrimaryHistory:
        found = self._histories.get(group)
        if found is None:
            found = self._histories[group] = lag.PrimaryHistory()
        return found

    def _replica_lag(self, probe: dict[str, Any], group: DatabaseGroup | None,
                     primary_lsn: int | None, group_name: str, now: float) -> None:
        position = probe.pop("position", None)
        probe["lag_bytes"] = probe["lag_seconds"] = None
        if probe["running"] and probe["health"] != DOWN and position is not None:
            measured = lag.measure("", primary_lsn, position,
                                   history=self._history(group_name), now=now, record=False)
            probe["lag_bytes"], probe["lag_seconds"] = (measured.lag_bytes,
                                                        measured.lag_seconds)
        if group is None:
            probe["max_lag_bytes"] = probe["max_lag_seconds"] = None
            return
        probe["max_lag_bytes"], probe["max_lag_seconds"] = (group.max_lag_bytes,
                                                            group.max_lag_seconds)
        if probe["health"] != HEALTHY:
            return
        too_far = []
        if (probe.get("lag_bytes") or 0) > group.max_lag_bytes:
            too_far.append(f"{probe['lag_bytes']} B > {group.max_lag_bytes} B")
        if (probe.get("lag_seconds") or 0) > group.max_lag_seconds:
            too_far.append(f"{probe['lag_seconds']:.1f} s > {group.max_lag_seconds:g} s")
        if too_far:
            probe["health"] = DEGRADED
            probe["detail"] = "lagging: " + ", ".join(too_far)

    def _rate(self, key: str, value: float | None, now: float) -> float | None:
        if value is None:
            self._previous.pop(key, None)
            return None
        previous = self._previous.get(key)
        self._previous[key] = (now, value)
        if previous is None or value < previous[1] or now <= previous[0]:
            return None  # first sample, or the counter was reset (process restarted)
        return (value - previous[1]) / (now - previous[0])

    def _cache_row(self, name: str, role: str, probe: Mapping[str, Any],
                   now: float) -> dict[str, Any]:
        hits, misses = probe.get("hits"), probe.get("misses")
        ratio = recent = None
        if hits is not None and misses is not None:
            ratio = hits / (hits + misses) if hits + misses else None
            hit_rate = self._rate(f"{name}:hits", hits, now)
            miss_rate = self._rate(f"{name}:misses", misses, now)
            if hit_rate is not None and miss_rate is not None and hit_rate + miss_rate > 0:
                recent = hit_rate / (hit_rate + miss_rate)
        return {"name": name, "role": role or "cache", "hits": hits, "misses": misses,
                "hit_ratio": ratio, "recent_hit_ratio": recent,
                "ops_per_second": probe.get("ops_per_second"), "memory": probe.get("memory"),
                "health": probe["health"]}

    def _edge_row(self, name: str, probe: Mapping[str, Any], now: float) -> dict[str, Any]:
        stats: varnish.EdgeStats | None = probe.get("edge")
        row: dict[str, Any] = {"name": name, "health": probe["health"], "hits": None,
                               "misses": None, "passes": None, "grace_hits": None,
                               "purges": None, "objects_purged": None, "requests": None,
                               "hit_ratio": None, "recent_hit_ratio": None,
                               "requests_per_second": None, "purges_per_second": None}
        if stats is None:
            for key in ("hits", "misses", "requests", "purges"):
                self._rate(f"{name}:{key}", None, now)
            return row
        row.update(hits=stats.hits, misses=stats.misses, passes=stats.passes,
                   grace_hits=stats.grace_hits, purges=stats.purges,
                   objects_purged=stats.objects_purged, requests=stats.requests,
                   hit_ratio=stats.hit_ratio)
        hit_rate = self._rate(f"{name}:hits", stats.hits, now)
        miss_rate = self._rate(f"{name}:misses", stats.misses, now)
        if hit_rate is not None and miss_rate is not None and hit_rate + miss_rate > 0:
            row["recent_hit_ratio"] = hit_rate / (hit_rate + miss_rate)
        row["requests_per_second"] = self._rate(f"{name}:requests", stats.requests, now)
        row["purges_per_second"] = self._rate(f"{name}:purges", stats.purges, now)
        return row

    def _app_row(self, rec: Mapping[str, Any], probe: Mapping[str, Any],
                 haproxy: Mapping[str, int], now: float) -> dict[str, Any]:
        name = rec.get("name", "?")
        total: float | None = None
        source = "n/a"
        if probe.get("metrics_total") is not None:
            total, source = probe["metrics_total"], "/metrics"
        elif name in haproxy:
            total, source = float(haproxy[name]), "haproxy stot"
        else:
            counted = self._access_log_total(name, rec.get("log", ""))
            if counted is not None:
                total, source = float(counted), "access log"
        rate = self._rate(f"{name}:requests:{source}", total, now)
        return {"name": name, "requests_total": total, "requests_per_second": rate,
                "source": source, "health": probe["health"]}

    def _access_log_total(self, name: str, log: str) -> int | None:
        """Request lines appended to the app server's log since the dashboard started."""
        if not log:
            return None
        try:
            size = Path(log).stat().st_size
        except OSError:
            return None
        offset, count = self._log_offsets.get(name, (size, 0))
        if size < offset:
            offset = 0  # truncated: start over
        if size > offset:
            with open(log, "rb") as fh:
                fh.seek(offset)
                data = fh.read(min(size - offset, 64 * 1024 * 1024))
            # Count whole lines only; a half-written last line waits for the next round.
            cut = data.rfind(b"\n") + 1
            count += count_access_lines(data[:cut])
            offset += cut
        self._log_offsets[name] = (offset, count)
        # No request line seen yet: the log may not be an access log at all.
        return count if count or self._saw_access_format(log) else None

    @staticmethod
    def _saw_access_format(log: str) -> bool:
        try:
            with open(log, "rb") as fh:
                fh.seek(max(0, Path(log).stat().st_size - 65536))
                return _ACCESS_RE.search(fh.read()) is not None
        except OSError:
            return False

    def close(self) -> None:
        """Stop the probe threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


_EDGE_COUNTERS = (
    ("hits", "djscale_edge_cache_hits_total", "Edge cache lookups that found a fresh or "
     "graced object (varnishstat MAIN.cache_hit)."),
    ("misses", "djscale_edge_cache_misses_total", "Edge cache lookups that went to the app "
     "(MAIN.cache_miss)."),
    ("passes", "djscale_edge_cache_passes_total", "Requests passed to the app without a "
     "lookup: personal or not GET/HEAD (MAIN.s_pass)."),
    ("grace_hits", "djscale_edge_cache_grace_hits_total", "Hits on stale objects served from "
     "grace (MAIN.cache_hit_grace)."),
    ("purges", "djscale_edge_cache_purges_total", "PURGE requests handled, by tag or URL "
     "(MAIN.n_purges)."),
    ("objects_purged", "djscale_edge_cache_objects_purged_total", "Objects removed by URL "
     "purges (MAIN.n_obj_purged)."),
)


def edge_metrics(edges: Iterable[Mapping[str, Any]]) -> str:
    """The edge rows of a snapshot in Prometheus text format (counters + hit ratio gauge)."""
    rows = [e for e in edges if e.get("hits") is not None]
    lines: list[str] = []
    for key, metric, help_text in _EDGE_COUNTERS:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{edge="{e["name"]}"}} {int(e[key] or 0)}' for e in rows]
    metric = "djscale_edge_cache_hit_ratio"
    lines += [f"# HELP {metric} Hits / (hits + misses) since the edge started.",
              f"# TYPE {metric} gauge"]
    lines += [f'{metric}{{edge="{e["name"]}"}} {e["hit_ratio"]}' for e in rows
              if e.get("hit_ratio") is not None]
    return "\n".join(lines) + "\n"


def _sum_backlog(tables: Iterable[Mapping[str, Any]] | None) -> int | None:
    if not tables:
        return None
    return sum(int(t["backlog"]) for t in tables)


# ---------------------------------------------------------------------- HTTP


class DashboardServer(ThreadingHTTPServer):
    """The dashboard's HTTP server: the page, ``/api/state`` and ``/health/live``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: Collector) -> None:
        super().__init__(address, _Handler)
        self.collector = collector
        self.page = page()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "djscale-dashboard"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page)
        elif path == "/api/state":
            body = json.dumps(self.server.collector.snapshot()).encode()
            self._send(200, "application/json", body)
        elif path == "/metrics":
            body = edge_metrics(self.server.collector.snapshot().get("edges") or []).encode()
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
        elif path in ("/health/live", "/health/ready"):
            self._send(200, "text/plain", b"ok\n")
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per poll would drown the log


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the dashboard of the cluster under ``--state-dir`` until terminated."""
    parser = argparse.ArgumentParser(prog="python -m djscale.cluster.dashboard",
                                     description="live dashboard of a djscale local cluster")
    parser.add_argument("--state-dir", default=None,
                        help="state folder (default: $DJSCALE_STATE_DIR or ./.djscale)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between two probes of every service")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir).absolute() if args.state_dir else default_state_dir()
    collector = Collector(state_dir=state_dir, interval=max(0.2, args.interval))
    try:
        server = DashboardServer((args.host, args.port), collector)
    except OSError as exc:
        print(f"dashboard: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    threading.Thread(target=collector.run_forever, args=(stop,), daemon=True,
                     name="collector").start()
    print(f"dashboard of {state_dir} on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
        collector.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
