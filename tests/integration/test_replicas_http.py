"""Replica routing through real app servers: the demo project behind nginx.

Boots a separate cluster (primary + 2 replicas, Redis, 2 gunicorn servers, nginx) because
the last test kills a replica. Which server answered is told by the server itself
(``inet_server_port()`` in the demo's ``/whoami`` view).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory
from djscale.topology import load

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"
REPLICAS = ("pg-default-replica1", "pg-default-replica2")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    cluster = djscale_cluster_factory(
        load(DEMO), parts=("postgres", "redis", "migrate", "app", "lb"), name="replicas-http")
    yield cluster


def _server(cluster: LocalCluster, service: str) -> psycopg.Connection[Any]:
    host, port = cluster.address(service)
    pg = cluster.topology.postgres
    return psycopg.connect(host=host, port=port, user=pg.user, dbname=pg.database,
                           autocommit=True, connect_timeout=2)


def request(cluster: LocalCluster, method: str, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    host, port = cluster.address("lb")
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": "localhost", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(body) if body else None
    finally:
        conn.close()


def wait_replayed(cluster: LocalCluster) -> None:
    with _server(cluster, "pg-default") as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    for service in REPLICAS:
        def done(service: str = service) -> bool:
            with _server(cluster, service) as conn:
                r = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                 (row[0],)).fetchone()
            return bool(r and r[0])
        assert wait_until(done, timeout=10)


def test_a_user_reads_their_own_write_through_the_app_while_replicas_are_paused(
        demo: LocalCluster) -> None:
    primary_port = demo.address("pg-default")[1]
    replica_ports = {demo.address(s)[1] for s in REPLICAS}
    wait_replayed(demo)
    # Every app process measures its replicas itself: let each one (4 workers) serve
    # reads and take a measurement while the replicas are caught up. A process that
    # first sees a replica while it is already behind can only bound its lag by the
    # replica's last replayed commit, and would (rightly) skip it.
    for _ in range(40):
        assert request(demo, "GET", "/whoami")[0] == 200
    time.sleep(1.5)
    for service in REPLICAS:
        with _server(demo, service) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
    try:
        status, headers, _ = request(demo, "POST", "/visit")
        assert status == 201
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith("djscale_lsn=")

        status, _, mine = request(demo, "GET", "/whoami", {"Cookie": cookie})
        status2, _, theirs = request(demo, "GET", "/whoami")
    finally:
        for service in REPLICAS:
            with _server(demo, service) as conn:
                conn.execute("SELECT pg_wal_replay_resume()")
    assert status == status2 == 200
    assert mine["read_db_port"] == primary_port
    assert theirs["read_db_port"] in replica_ports
    assert mine["visits_seen"] == theirs["visits_seen"] + 1  # the replica lacks the write


def test_killing_a_replica_under_2000_gets_fails_no_request(demo: LocalCluster) -> None:
    total, kill_at = 2000, 500
    killed = threading.Event()
    lock = threading.Lock()
    done = 0
    results: list[tuple[float, int, int | None, str]] = []
    killed_port = demo.address("pg-default-replica1")[1]

    def one(_: int) -> None:
        nonlocal done
        started = time.monotonic()
        try:
            status, _, body = request(demo, "GET", "/whoami")
            port = body.get("read_db_port") if isinstance(body, dict) else None
            outcome = (started, status, port, "")
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            outcome = (started, 0, None, repr(exc))
        with lock:
            results.append(outcome)
            done += 1
            trigger = done == kill_at
        if trigger:
            demo.stop_service("pg-default-replica1", crash=True)
            killed.set()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(total)))

    assert killed.is_set()
    failures = [r for r in results if r[1] != 200]
    assert failures == [], failures[:5]
    assert len(results) == total
    assert any(r[2] == killed_port for r in results), "replica1 never served a read"
