"""Connection pooling: a DB-backed view with no pooling, persistent connections, and
Django 5.2's native psycopg pool.

Three demo clusters that differ only in the topology's ``postgres`` table (``conn_max_age
= 0``; ``conn_max_age = 60``; ``pool = true``), each with one gunicorn app server of 2
sync workers and its own PostgreSQL primary. wrk drives ``/whoami`` (a count through the
ORM plus one raw query) straight at each app server, in alternating rounds. Baseline: no
pooling, i.e. one new PostgreSQL connection (a forked backend) per request.

Besides requests/s, the notes give PostgreSQL sessions opened per request (from
``pg_stat_database.sessions``) and the backends held open when the run ends, which is
what the pooling trade-off in docs/pooling.md is about.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import Context, Result, demo_project, wrk
from djscale.cluster import postgres as pg

TOPIC = "pooling"

CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"conn_max_age": 0},
    "persistent": {"conn_max_age": 60},
    "pool": {"pool": True},
}


def _sessions(host: str, port: int, user: str, db: str) -> tuple[int, int]:
    """(sessions ever opened on ``db``, backends connected to ``db`` now)."""
    with pg.connect(host, port, user, "postgres") as conn:
        opened = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                              [db]).fetchone()
        now = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           [db]).fetchone()
    return int(opened[0] if opened else 0), int(now[0] if now else 0)


def run(ctx: Context) -> list[Result]:
    clusters = {}
    for key, postgres in CONFIGS.items():
        data = {
            "project": demo_project(),
            "postgres": {"database": "demo", **postgres},
            "app": {"servers": 1, "workers": 2},
        }
        clusters[key] = ctx.factory(data, parts=("postgres", "redis", "migrate", "app"),
                                    name=f"pooling-{key}")
    seconds = 2 if ctx.quick else 5
    rounds = 1 if ctx.quick else 3
    rps: dict[str, list[float]] = {k: [] for k in clusters}
    p99: dict[str, list[float]] = {k: [] for k in clusters}
    per_request: dict[str, list[float]] = {k: [] for k in clusters}
    held: dict[str, int] = {}
    for _ in range(rounds):
        for key, cluster in clusters.items():
            host, port = cluster.address("app-1")
            pg_host, pg_port = cluster.address("pg-default")
            user = cluster.topology.postgres.user
            before, _ = _sessions(pg_host, pg_port, user, "demo")
            r = wrk(f"http://{host}:{port}/whoami", seconds=seconds, connections=16)
            after, held[key] = _sessions(pg_host, pg_port, user, "demo")
            rps[key].append(r.requests_per_second)
            p99[key].append(r.p99_ms)
            per_request[key].append((after - before) / max(r.requests, 1))
    med = {k: statistics.median(v) for k, v in rps.items()}
    lat = {k: statistics.median(v) for k, v in p99.items()}
    opened = {k: statistics.median(v) for k, v in per_request.items()}

    def note(key: str) -> str:
        return (f"p99 {lat[key]:.1f} ms vs {lat['none']:.1f} ms; PostgreSQL sessions opened "
                f"per request {opened[key]:.3f} vs {opened['none']:.3f}; backends held after "
                f"the run {held[key]} vs {held['none']} (1 app server x 2 sync workers)")

    return [
        Result(TOPIC, "persistent connections (CONN_MAX_AGE=60), DB-backed view",
               med["persistent"], med["none"], "req/s", "no pooling (CONN_MAX_AGE=0)",
               notes=note("persistent")),
        Result(TOPIC, "psycopg pool (OPTIONS pool, max_size 8), DB-backed view",
               med["pool"], med["none"], "req/s", "no pooling (CONN_MAX_AGE=0)",
               notes=note("pool")),
    ]
