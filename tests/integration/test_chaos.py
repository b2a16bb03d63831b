"""Chaos under load through the load balancer: what a failure costs, and that nothing is lost.

Each scenario runs against its own demo cluster (the shared test cluster is never broken),
with a bounded load and a fault of a few seconds; expectations are the scenarios' own
(see djscale.chaos.scenarios): zero failed idempotent requests for app-server, replica,
replication-pause and Redis faults; fast 503s and no lost or duplicated write while the
primary restarts; zero lost events and no event applied twice when the Celery broker is
stopped or a worker is killed mid-task (the demo's POST /notes publishes a note_created
event through the transactional outbox; demo.index_note consumes it through an inbox).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from djscale.chaos import ChaosOptions, ChaosReport, run_scenario
from djscale.cluster import LocalCluster
from djscale.errors import ClusterError
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
    return djscale_cluster_factory(load(DEMO), parts=("postgres", "redis", "migrate", "app", "lb",
                                                               "celery"),
                                   name="chaos")


EVENTS = ChaosOptions(read_path="/whoami", write_path="/notes?work_ms=50",
                      count_sql="SELECT count(*) FROM demo_note", write_every=10,
                      event_topic="note_created", event_consumer="demo.index_note",
                      effect_sql="SELECT event_id FROM demo_noteindexed",
                      requests=6000, max_seconds=30, concurrency=6, fault_after=1.0,
                      fault_seconds=2.0, tail_seconds=1.0,
                      # A lost message is sent again REDELIVER_AFTER (10 s) after it was
                      # published, once the relay finds no result: room for two rounds.
                      drain_seconds=45)


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

    def ready() -> tuple[int, dict[str, Any]]:
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


def check_events(report: ChaosReport) -> None:
    """Zero lost events, none applied twice, whatever the broker did with its messages."""
    text = report.text()
    # The outbox's guarantee: every acknowledged write committed its event, and every
    # event left the outbox once the broker was back.
    assert report.events_published == report.writes_ok == report.rows_added, text
    assert "still wait in the outbox" not in text, text
    assert report.effects_duplicated == 0, text
    # A message the broker accepted and then lost (the Redis transport pops it before it
    # records it as unacknowledged) is sent again by the relay: its delivery was never
    # confirmed (docs/events.md, "Delivery confirmation").
    assert report.events_lost == 0, text
    assert report.events_consumed == report.events_published, text
    assert report.passed, text


def test_stopped_broker_loses_no_event_the_outbox_holds_them(demo: LocalCluster) -> None:
    report = run_scenario(demo, "stop-broker", EVENTS)
    print(report.text())
    assert report.held_in_outbox and report.held_in_outbox >= 1, report.text()
    check_events(report)


def test_worker_killed_mid_task_loses_no_event_and_applies_none_twice(
        demo: LocalCluster) -> None:
    report = run_scenario(demo, "kill-worker", EVENTS)
    print(report.text())
    # Killed with messages unacknowledged (acks_late): those came back and were consumed.
    assert report.in_flight_at_fault and report.in_flight_at_fault >= 1, report.text()
    assert report.in_flight_consumed == report.in_flight_at_fault, report.text()
    check_events(report)


def test_event_scenario_without_event_options_is_a_clear_error(demo: LocalCluster) -> None:
    with pytest.raises(ClusterError, match="--event-topic"):
        run_scenario(demo, "kill-worker", OPTIONS)
    out = subprocess.run(
        [sys.executable, "-m", "djscale.cli", "chaos", "stop-broker", "-t", str(DEMO),
         "--state-dir", str(demo.state_dir), "--write-path", "/notes"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert "--event-topic" in out.stderr.strip().splitlines()[-1], out.stderr
