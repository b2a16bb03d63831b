"""Chaos under load through the load balancer: what a failure costs, and that nothing is lost.

Each scenario runs against its own demo cluster (the shared test cluster is never broken),
with a bounded load and a fault of a few seconds; expectations are the scenarios' own
(see djscale.chaos.scenarios): zero failed idempotent requests for app-server, replica,
replication-pause and Redis faults; fast 503s and no lost or duplicated write while the
primary restarts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.chaos import ChaosOptions, run_scenario
from djscale.cluster import LocalCluster
from djscale.testing import ClusterFactory
from djscale.topology import load

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples/demo/djscale.toml"
OPTIONS = ChaosOptions(read_path="/whoami", write_path="/visit",
                       count_sql="SELECT count(*) FROM demo_visit", requests=6000,
                       max_seconds=30, concurrency=6, fault_after=1.0, fault_seconds=2.0,
                       tail_seconds=2.0)


@pytest.fixture(scope="module")
def demo(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    return djscale_cluster_factory(load(DEMO), parts=("postgres", "redis", "migrate", "app", "lb"),
                                   name="chaos")


@pytest.mark.parametrize("scenario", [
    "kill-app-server", "kill-replica", "pause-replication", "stop-redis", "restart-primary",
])
def test_scenario_meets_its_expectation(demo: LocalCluster, scenario: str) -> None:
    report = run_scenario(demo, scenario, OPTIONS)
    print(report.text())
    assert report.requests > 100, report.text()
    assert report.passed, report.text()
    assert all(r.healthy for r in demo.status()), demo.status()


def test_ready_stays_200_degraded_while_redis_is_down(demo: LocalCluster) -> None:
    import json
    import urllib.request

    from djscale.cluster.supervisor import wait_until

    host, port = demo.address("app-1")
    url = f"http://{host}:{port}/health/ready"

    def ready() -> tuple[int, dict]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())

    demo.stop_service("redis")
    try:
        # Sessions are cached_db and the tiered cache computes through: Redis being away
        # degrades the app server; it must not take it out of the load balancer.
        assert wait_until(lambda: not ready()[1]["checks"]["cache"]["ok"], timeout=10)
        status, body = ready()
        assert status == 200, body
        assert body["status"] == "degraded", body
    finally:
        demo.start_service("redis")
