"""A running cluster changes shape under wrk load without failing a request.

The demo (reads on replicas, writes on the primary, a Celery worker and the relay) behind
each load balancer: HAProxy, whose runtime API changes the servers, and nginx, whose
Unix-socket slots are re-pointed (:mod:`djscale.cluster.lb`); neither is ever reloaded.
The watchdog runs, so a test also shows it does not fight the change. wrk runs while the
cluster is changed and is stopped right after: its totals must show no non-2xx answer
and no socket error (connect, read, write, timeout). One cluster per load balancer, shared
by the tests of this module and stopped after them (two cores).
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from djscale.chaos import ChaosOptions, run_scenario
from djscale.chaos import scenarios as chaos
from djscale.chaos.events import consumers_mid_task, unacked_task_ids
from djscale.cluster import LocalCluster
from djscale.cluster.lbctl import LiveBalancer
from djscale.cluster.rollout import rollout
from djscale.cluster.scale import ScaleRequest, scale
from djscale.cluster.supervisor import wait_until
from djscale.errors import ClusterError
from djscale.testing import ClusterFactory, write_topology
from djscale.topology import Topology
from tests.integration.helpers import WrkReport, request, sql, wrk_load

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"
LOAD = str(ROOT / "examples/demo/load.lua")

pytestmark = pytest.mark.integration


def _demo(lb: str, **changes: Any) -> dict[str, Any]:
    data = tomllib.loads(DEMO.read_text())
    data["lb"] = {**data["lb"], "kind": lb}
    data["postgres"]["replicas"] = 1  # two cores: one replica shows the reads as well
    for table, values in changes.items():
        data[table] = {**data.get(table, {}), **values}
    return data


@pytest.fixture(scope="module", params=["haproxy", "nginx"])
def demo(request: pytest.FixtureRequest,
         djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    cluster = djscale_cluster_factory(
        _demo(request.param), source=DEMO, name=f"live-{request.param}",
        parts=("postgres", "redis", "migrate", "app", "lb", "celery", "watchdog"))
    lb = _lb_workers(cluster)
    yield cluster
    # The load balancer was never reloaded or restarted (nginx: the same workers).
    assert _lb_workers(cluster) == lb
    with contextlib.suppress(Exception):
        cluster.down(purge=True)  # before the next load balancer's cluster boots


def _lb_workers(cluster: LocalCluster) -> tuple[int, set[int]]:
    proc = cluster.process("lb")
    return proc.pid, LiveBalancer(cluster.topology.lb, proc, slots=0).workers()


def _new_version(cluster: LocalCluster, **changes: Any) -> LocalCluster:
    """The same cluster seen through an edited topology file (what a deploy changes)."""
    path = cluster.state_dir / "djscale.toml"
    topology: Topology = write_topology(_demo(cluster.topology.lb.kind, **changes), path,
                                        base=DEMO.parent)
    return LocalCluster(topology, cluster.state_dir)


def _no_failure(wrk: WrkReport) -> None:
    """wrk got a 2xx/3xx answer to every request: no 5xx, no socket error of any kind."""
    print(f"wrk: {wrk.requests} requests, {wrk.non_2xx} non-2xx, socket errors "
          f"{wrk.socket_errors or 'none'}")
    assert wrk.requests > 100, wrk.output
    assert wrk.non_2xx == 0, wrk.output
    # (wrk prints its "Socket errors" line only when there was one)
    assert not any(wrk.socket_errors.values()), wrk.output


def _url(cluster: LocalCluster) -> str:
    host, port = cluster.address("lb")
    return f"http://{host}:{port}"


def _visits(cluster: LocalCluster) -> int:
    return int(sql(cluster, "pg-default", "SELECT count(*) FROM demo_visit")[0][0])


def test_rollout_under_load_replaces_every_server_and_fails_no_request(
        demo: LocalCluster) -> None:
    before = {p.name: p.pid for p in demo.processes()}
    new = _new_version(demo, app={"workers": 3})
    visits = _visits(demo)
    with wrk_load(_url(demo), script=LOAD) as reports:
        report = rollout(new)
    wrk = reports[0]
    _no_failure(wrk)
    replaced = {r.name: r for r in report.replaced}
    assert set(replaced) == {"app-1", "app-2", "celery-1", "relay"}
    after = {p.name: p.pid for p in demo.processes()}
    for name in replaced:
        assert after[name] != before[name], name
        assert replaced[name].new_pid == after[name]
    # The new command line runs (3 workers), the watchdog left the rollout alone, and the
    # writes of the load (one request in four) all committed.
    assert "--workers" in demo.process("app-1").cmd
    assert demo.process("app-1").cmd[demo.process("app-1").cmd.index("--workers") + 1] == "3"
    assert all(demo.process(n).supervision.get("restarts", 0) == 0 for n in replaced)
    assert _visits(demo) - visits >= wrk.requests // 4 - 8
    answers = {request(demo, "GET", "/whoami").json()["app_server"] for _ in range(6)}
    assert answers == {"app-1", "app-2"}


def test_a_rollout_whose_new_server_never_gets_ready_rolls_back(demo: LocalCluster) -> None:
    before = {n: demo.process(n).cmd for n in ("app-1", "app-2")}
    broken = _new_version(demo, project={"wsgi": "demo.nosuchmodule:application"})
    with wrk_load(_url(demo), script=LOAD) as reports, \
            pytest.raises(ClusterError, match="rollout aborted: app-1 did not become ready"):
        rollout(broken, parts=("app",), ready_timeout=20)
    assert reports[0].non_2xx == 0 and reports[0].failed == 0, reports[0].output
    assert {n: demo.process(n).cmd for n in ("app-1", "app-2")} == before
    assert request(demo, "GET", "/whoami").status == 200


def test_scale_up_to_four_then_down_to_one_under_load_fails_no_request(
        demo: LocalCluster) -> None:
    with wrk_load(_url(demo), script=LOAD) as reports:
        scale(demo, ScaleRequest(app=4), log=False)
        assert demo.app_servers() == ["app-1", "app-2", "app-3", "app-4"]
        seen: set[str] = set()

        def all_serve() -> bool:  # new servers get little traffic at first (slowstart)
            seen.add(request(demo, "GET", "/whoami").json()["app_server"])
            return len(seen) == 4

        assert wait_until(all_serve, timeout=30, interval=0.01), seen
        scale(demo, ScaleRequest(app=1), log=False)
    _no_failure(reports[0])
    assert demo.app_servers() == ["app-1"]
    assert {request(demo, "GET", "/whoami").json()["app_server"] for _ in range(4)} == {"app-1"}
    scale(demo, ScaleRequest(app=2), log=False)  # as the other tests expect it


# The chaos harness's event load (docs/reliability.md): POST /notes publishes a
# note_created event through the outbox; demo.index_note consumes it (50 ms) via an inbox.
EVENTS = ChaosOptions(read_path="/whoami", write_path="/notes?work_ms=50",
                      count_sql="SELECT count(*) FROM demo_note", write_every=10,
                      event_topic="note_created", event_consumer="demo.index_note",
                      effect_sql="SELECT event_id FROM demo_noteindexed",
                      requests=4000, max_seconds=30, concurrency=6, fault_after=1.0,
                      fault_seconds=1.0, tail_seconds=1.0, drain_seconds=45)


def _roll_workers_mid_task(fault: chaos._Fault) -> None:
    """``rollout --parts celery`` the moment a consumer is mid-task."""
    seen = [0]

    def mid_task() -> bool:
        seen[0] = consumers_mid_task(fault.cluster)
        return seen[0] > 0

    wait_until(mid_task, 10, interval=0.01)
    fault.report.mid_task_at_fault = seen[0]
    report = rollout(fault.cluster, parts=("celery",))
    fault.report.notes.append("rollout: " + "; ".join(report.text().splitlines()))
    # Taken but not acknowledged now (the new worker's, and what the old one gave back
    # unstarted): the report checks each is consumed exactly once.
    fault.in_flight = unacked_task_ids(fault.cluster)
    fault.report.in_flight_at_fault = len(fault.in_flight)


def test_celery_rollout_mid_task_under_event_load_loses_and_repeats_no_event(
        demo: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    if demo.topology.lb.kind != "nginx":
        pytest.skip("the Celery part does not depend on the load balancer: run once")
    before = {n: demo.process(n).pid for n in ("celery-1", "relay")}
    log = Path(demo.process("celery-1").log)
    offset = log.stat().st_size
    monkeypatch.setitem(chaos.SCENARIOS, "rollout-celery", chaos._Scenario(
        "rollout --parts celery (warm shutdown) while a consumer is mid-task",
        "zero failed requests; every event consumed exactly once",
        _roll_workers_mid_task, lambda fault: None, True,
        lambda report, load, t0, t1: (report.reads_failed == 0 and report.writes_failed == 0
                                      and bool(report.events_published)
                                      and report.events_lost == 0
                                      and not report.effects_duplicated),
        events=True))
    report = run_scenario(demo, "rollout-celery", EVENTS)
    print(report.text())
    assert report.mid_task_at_fault and report.mid_task_at_fault >= 1, report.text()
    # (nothing taken and unacknowledged at the end of the rollout: nothing to follow)
    assert not report.in_flight_at_fault or \
        report.in_flight_consumed == report.in_flight_at_fault, report.text()
    assert report.reads_failed == 0 and report.writes_failed == 0, report.text()
    assert report.events_published and report.events_published == report.writes_ok, \
        report.text()
    assert report.events_lost == 0, report.text()
    assert report.events_consumed == report.events_published, report.text()
    assert report.effects_duplicated == 0, report.text()
    assert report.passed, report.text()
    after = {n: demo.process(n).pid for n in before}
    assert all(after[n] != before[n] for n in before), (before, after)
    # The old worker shut down warm (finished its running tasks), nothing was killed.
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
    assert "Warm shutdown" in text, text[-2000:]
    assert "WorkerLostError" not in text and "SIGKILL" not in text, text[-2000:]
