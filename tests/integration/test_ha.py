"""Primary failover on Patroni + etcd, under load through the load balancer.

One demo cluster with ``[postgres] ha = "patroni"`` (a leader and one replica, one etcd
member) serves both tests: its status names the leader, then the leader's node is killed
(Patroni and PostgreSQL SIGKILLed) under mixed read/write load, the replica is promoted
once the leader key expires (ttl), writes come back without restarting the app servers,
and the old leader rejoins as a replica through pg_rewind. The 20-failover loop of the
docs is ``djscale chaos kill-primary-node --repeat 20``, not a default test.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from djscale.chaos import ChaosOptions, run_scenario
from djscale.cluster import LocalCluster, ha
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples/demo/djscale.toml"


@pytest.fixture(scope="module")
def patroni_demo(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    data = tomllib.loads(DEMO.read_text(encoding="utf-8"))
    data["postgres"] = {**data["postgres"], "replicas": 1, "ha": "patroni"}
    data.pop("celery", None)
    return djscale_cluster_factory(data, parts=("postgres", "redis", "migrate", "app", "lb"),
                                   name="patroni", source=DEMO)


def test_status_shows_the_leader_and_a_streaming_replica(patroni_demo: LocalCluster) -> None:
    rows = {r.name: r for r in patroni_demo.status()}
    assert rows["etcd-1"].healthy
    details = sorted(rows[n].detail.split(",")[0] for n in ("pg-default",
                                                            "pg-default-replica1"))
    assert details == ["leader", "replica"], rows
    assert all(rows[n].healthy for n in rows), rows


def test_killed_leader_node_fails_over_and_rejoins_as_a_replica(
        patroni_demo: LocalCluster) -> None:
    before = ha.view(patroni_demo, "default")
    assert before.leader is not None
    options = ChaosOptions(read_path="/whoami", write_path="/visit",
                           count_sql="SELECT count(*) FROM demo_visit", requests=10**6,
                           max_seconds=150, concurrency=4, fault_after=1.0,
                           fault_seconds=0.0, tail_seconds=1.0)
    report = run_scenario(patroni_demo, "kill-primary-node", options)
    print(report.text())
    assert report.passed, report.text()
    assert report.reads_failed == 0
    assert report.leader_after != before.leader.name
    assert report.timeline_after == (before.timeline or 0) + 1
    # The old leader is back, as a replica of the new one, and `cluster status` says so.
    rows = {r.name: r for r in patroni_demo.status()}
    old = rows[before.leader.name]
    assert old.healthy and old.detail.startswith("replica"), old
    assert rows[report.leader_after].detail.startswith("leader"), rows
