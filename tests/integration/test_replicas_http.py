"""Replica routing through real app servers: the demo project behind nginx.

Boots a separate cluster (primary + 2 replicas, Redis, 2 gunicorn servers, nginx) because
the last test kills a replica. Which server answered is told by the server itself
(``inet_server_port()`` in the demo's ``/whoami`` view).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory
from djscale.topology import load
from tests.integration.helpers import replay_paused, request, wait_replayed

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"
REPLICAS = ("pg-default-replica1", "pg-default-replica2")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    cluster = djscale_cluster_factory(
        load(DEMO), parts=("postgres", "redis", "migrate", "app", "lb"), name="replicas-http")
    yield cluster


def test_a_user_reads_their_own_write_through_the_app_while_replicas_are_paused(
        demo: LocalCluster) -> None:
    primary_port = demo.address("pg-default")[1]
    replica_ports = {demo.address(s)[1] for s in REPLICAS}
    wait_replayed(demo)
    # Every app process measures its replicas itself: wait until each one (servers x
    # workers) has served a read from a replica, i.e. measured them while they were
    # caught up. A process that first sees a replica while it is already behind can only
    # bound its lag by the replica's last replayed commit, and would (rightly) skip it.
    processes = demo.topology.app.servers * demo.topology.app.workers
    on_replicas: set[int] = set()

    def all_processes_read_from_replicas() -> bool:
        reply = request(demo, "GET", "/whoami")
        assert reply.status == 200
        if reply.json()["read_db_port"] in replica_ports:
            on_replicas.add(reply.json()["pid"])
        return len(on_replicas) == processes

    assert wait_until(all_processes_read_from_replicas, timeout=30, interval=0.01), on_replicas
    with replay_paused(demo, REPLICAS):
        created = request(demo, "POST", "/visit")
        assert created.status == 201
        cookie = created.headers["set-cookie"].split(";")[0]
        assert cookie.startswith("djscale_lsn=")

        mine = request(demo, "GET", "/whoami", headers={"Cookie": cookie})
        theirs = request(demo, "GET", "/whoami")
    assert mine.status == theirs.status == 200
    assert mine.json()["read_db_port"] == primary_port
    assert theirs.json()["read_db_port"] in replica_ports
    # the replica lacks the write
    assert mine.json()["visits_seen"] == theirs.json()["visits_seen"] + 1


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
            reply = request(demo, "GET", "/whoami")
            body = reply.json()
            port = body.get("read_db_port") if isinstance(body, dict) else None
            outcome = (started, reply.status, port, "")
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            outcome = (started, 0, None, repr(exc))
        with lock:
            results.append(outcome)
            done += 1
            trigger = done == kill_at
        if trigger:
            demo.stop_service("pg-default-replica1", crash=True)
            killed.set()

    wait_replayed(demo)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(total)))
    finally:  # the module's other tests need both replicas (tests run in any order)
        demo.start_service("pg-default-replica1")
        wait_replayed(demo)

    assert killed.is_set()
    failures = [r for r in results if r[1] != 200]
    assert failures == [], failures[:5]
    assert len(results) == total
    assert any(r[2] == killed_port for r in results), "replica1 never served a read"
