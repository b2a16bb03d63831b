"""A replica whose WAL receiver is stopped shows a lag that grows, everywhere it is shown.

The demo project on one app server, a primary with two replicas and the dashboard. The
WAL receiver of replica 2 is frozen with SIGSTOP (the server itself keeps answering
queries, and what it has received it has replayed, so "received minus replayed" says 0)
while writes go on at the primary. Replica lag is one measure taken against the primary
(:mod:`djscale.db.lag`), so ``/health/ready``, ``djscale_replica_lag_seconds``,
``djscale cluster status`` and the dashboard all report it above 15 s, and the router
stops reading from the replica once it passes ``max_lag_seconds``. After SIGCONT the lag
goes back down and the replica serves reads again.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"

pytestmark = pytest.mark.integration

MAX_LAG_SECONDS = 5
SHOWN_LAG = 15.0
"""Every consumer must show a lag above this while replication is broken."""
STALLED = "default_replica2"
HEALTHY = "default_replica1"

TOPOLOGY = {
    "project": {"name": "lagdemo", "pythonpath": ".", "settings": "demo.settings",
                "wsgi": "demo.wsgi:application"},
    "postgres": {"database": "demo", "replicas": 2, "max_lag_seconds": MAX_LAG_SECONDS},
    "redis": {"mode": "single"},
    "app": {"servers": 1, "workers": 1},
}


@pytest.fixture(scope="module")
def cluster(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    booted = djscale_cluster_factory(
        TOPOLOGY, parts=("postgres", "redis", "migrate", "app", "dashboard"),
        name="lag-disconnected", source=DEMO)
    yield booted
    booted.down(purge=True)


def _get(cluster: LocalCluster, service: str, path: str) -> tuple[int, bytes]:
    host, port = cluster.address(service)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _connect(cluster: LocalCluster, service: str) -> psycopg.Connection[Any]:
    host, port = cluster.address(service)
    pg = cluster.topology.postgres
    return psycopg.connect(host=host, port=port, user=pg.user, dbname=pg.database,
                           autocommit=True, connect_timeout=5)


# ------------------------------------------------------------------ the four readings


def health_lag(cluster: LocalCluster) -> float | None:
    """``/health/ready``'s lag of the stalled replica."""
    _, body = _get(cluster, "app-1", "/health/ready")
    check = json.loads(body)["checks"][f"replica:{STALLED}"]
    value = check.get("lag_seconds")
    return None if value is None else float(value)


def metric_lag(cluster: LocalCluster) -> float | None:
    """``djscale_replica_lag_seconds`` of the stalled replica on the app server."""
    _, body = _get(cluster, "app-1", "/metrics")
    found = re.search(rf'^djscale_replica_lag_seconds\{{alias="{STALLED}"\}} (\S+)$',
                      body.decode(), re.M)
    return float(found.group(1)) if found else None


def status_lag(cluster: LocalCluster) -> float | None:
    """The lag ``djscale cluster status`` prints for the stalled replica."""
    out = subprocess.run(
        [sys.executable, "-m", "djscale.cli", "cluster", "status", "--topology",
         cluster.topology.source, "--state-dir", str(cluster.state_dir)],
        capture_output=True, text=True, timeout=60, check=False).stdout
    name = "pg-" + STALLED.replace("_", "-")
    line = next((ln for ln in out.splitlines() if ln.split()[:1] == [name]), "")
    found = re.search(r"lag ([0-9.]+)s", line)
    return float(found.group(1)) if found else None


def dashboard_lag(cluster: LocalCluster) -> float | None:
    """The dashboard's lag of the stalled replica (its ``/api/state`` data)."""
    _, body = _get(cluster, "dashboard", "/api/state")
    name = "pg-" + STALLED.replace("_", "-")
    rows = [r for r in json.loads(body).get("replicas", []) if r["name"] == name]
    return rows[0]["lag_seconds"] if rows else None


READINGS = {"/health/ready": health_lag, "djscale_replica_lag_seconds": metric_lag,
            "djscale cluster status": status_lag, "dashboard": dashboard_lag}


def _above(cluster: LocalCluster, seconds: float) -> dict[str, bool]:
    return {name: (value := read(cluster)) is not None and value > seconds
            for name, read in READINGS.items()}


def _readings(cluster: LocalCluster) -> dict[str, float | None]:
    return {name: read(cluster) for name, read in READINGS.items()}


def _read_aliases(cluster: LocalCluster, count: int) -> set[str]:
    """The replicas that served ``count`` reads through the app's router."""
    seen = set()
    for _ in range(count):
        status, body = _get(cluster, "app-1", "/whoami")
        assert status == 200, body
        seen.add(json.loads(body)["read_db"])
    return seen


def _walreceiver(cluster: LocalCluster) -> int:
    with _connect(cluster, "pg-" + STALLED.replace("_", "-")) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity "
                           "WHERE backend_type = 'walreceiver'").fetchone()
    assert row is not None, "the replica has no WAL receiver"
    return int(row[0])


class _Writer(threading.Thread):
    """Commits a row on the primary every 0.2 s until stopped."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(name="lag-writer", daemon=True)
        self.cluster = cluster
        self.stopping = threading.Event()
        self.written = 0

    def run(self) -> None:
        with _connect(self.cluster, "pg-default") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_writes (at timestamptz)")
            while not self.stopping.is_set():
                conn.execute("INSERT INTO lag_writes VALUES (now())")
                self.written += 1
                self.stopping.wait(0.2)


def test_a_replica_with_a_stopped_wal_receiver_shows_a_growing_lag_everywhere(
        cluster: LocalCluster) -> None:
    # Both replicas serve reads while replication works.
    assert wait_until(lambda: _read_aliases(cluster, 10) == {HEALTHY, STALLED}, 30), \
        _readings(cluster)
    assert wait_until(lambda: not any(_above(cluster, 1.0).values()), 30), _readings(cluster)

    writer = _Writer(cluster)
    writer.start()
    pid = _walreceiver(cluster)
    os.kill(pid, signal.SIGSTOP)
    try:
        # The router drops the replica once its lag passes max_lag_seconds.
        assert wait_until(lambda: (health_lag(cluster) or 0) > MAX_LAG_SECONDS + 1, 30), \
            _readings(cluster)
        # The router's probe refreshes every second: it follows within a round.
        assert wait_until(lambda: _read_aliases(cluster, 20) == {HEALTHY}, 10), \
            _readings(cluster)
        # The outage lasts until every consumer shows more than 15 s (about 16-20 s).
        assert wait_until(lambda: all(_above(cluster, SHOWN_LAG).values()), 40,
                          interval=0.5), _readings(cluster)
        assert _read_aliases(cluster, 20) == {HEALTHY}
        _, body = _get(cluster, "app-1", "/health/ready")
        check = json.loads(body)["checks"][f"replica:{STALLED}"]
        assert check["ok"] is False and check["error"] == "LagTooHigh", check
        assert check["lag_bytes"] > 0, check
        assert writer.written > 50
    finally:
        os.kill(pid, signal.SIGCONT)
        writer.stopping.set()
        writer.join(timeout=10)
    # Replication resumes: the lag goes back down and the replica serves reads again.
    assert wait_until(lambda: all(v is not None and v < 1.0
                                  for v in _readings(cluster).values()), 60,
                      interval=0.5), _readings(cluster)
    assert wait_until(lambda: STALLED in _read_aliases(cluster, 10), 30)
