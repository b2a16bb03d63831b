"""The watchdog restarts crashed services of a local cluster, with back-off and a limit.

One cluster (PostgreSQL, Redis, 2 gunicorn app servers, 1 Celery worker and the
watchdog) is booted for this module with the project of
:mod:`tests.integration.supervision_support`. Services are killed with SIGKILL the way a
crash or the OOM killer would; nothing calls ``up`` or ``start_service`` afterwards: the
tests wait for the watchdog's own record of the restart.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale import cli
from djscale.cluster import LocalCluster
from djscale.cluster.dashboard import Collector
from djscale.cluster.supervisor import ManagedProcess, group_members, pid_alive, wait_until
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "tests.integration.supervision_support"
PARTS = ("postgres", "redis", "app", "celery", "watchdog")


@pytest.fixture(scope="module")
def cluster(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    booted = djscale_cluster_factory(
        {"project": {"name": "supervision", "pythonpath": str(ROOT),
                     "settings": f"{SUPPORT}.settings", "wsgi": f"{SUPPORT}.wsgi:application"},
         "postgres": {"database": "supervision"},
         "app": {"servers": 2, "workers": 1},
         "celery": {"workers": 1, "concurrency": 1, "app": f"{SUPPORT}.celery:app"}},
        parts=PARTS, name="supervision")
    try:
        yield booted
    finally:
        booted.down()


def _kill9(proc: ManagedProcess) -> None:
    os.killpg(proc.pid, signal.SIGKILL)


def _restarts(cluster: LocalCluster, name: str) -> int:
    return int(cluster.process(name).supervision.get("restarts", 0))


def _restarted(cluster: LocalCluster, name: str, old_pid: int, restarts: int) -> bool:
    proc = cluster.process(name)
    return (proc.pid != old_pid and proc.alive()
            and proc.supervision.get("state") == "running"
            and proc.supervision.get("restarts") == restarts)


def _watchdog_metric(cluster: LocalCluster, service: str) -> float:
    host, port = cluster.address("watchdog")
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    prefix = f'djscale_process_restarts_total{{kind="gunicorn",service="{service}"}} '
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_killed_app_server_is_restarted_on_its_port_without_cluster_up(
        cluster: LocalCluster) -> None:
    before = cluster.process("app-1")
    others = _restarts(cluster, "app-2"), cluster.process("app-2").pid
    _kill9(before)
    assert wait_until(lambda: _restarted(cluster, "app-1", before.pid, 1), 60), \
        cluster.process("app-1").supervision
    assert not pid_alive(before.pid)
    after = cluster.process("app-1")
    assert (after.host, after.port) == (before.host, before.port)
    row = next(r for r in cluster.status() if r.name == "app-1")
    assert row.healthy and row.restarts == 1 and row.supervision == "running"
    assert row.last_exit == "exited (status unknown)" or "SIGKILL" in row.last_exit
    assert wait_until(lambda: _watchdog_metric(cluster, "app-1") == 1, 10)
    # The dashboard's snapshot carries the same facts.
    collector = Collector(state_dir=cluster.state_dir)
    try:
        snap = next(s for s in collector.collect()["services"] if s["name"] == "app-1")
    finally:
        collector.close()
    assert (snap["restarts"], snap["supervision"]) == (1, "running")
    # The other app server was left alone.
    assert (_restarts(cluster, "app-2"), cluster.process("app-2").pid) == others


def test_a_killed_celery_worker_is_restarted_and_consumes_again(
        cluster: LocalCluster) -> None:
    before = cluster.process("celery-1")
    log = Path(before.log)
    offset = log.stat().st_size
    _kill9(before)
    assert wait_until(lambda: _restarted(cluster, "celery-1", before.pid, 1), 90), \
        cluster.process("celery-1").supervision
    # "running" means its readiness probe passed: the new worker said " ready." again.
    with open(log, "rb") as fh:
        fh.seek(offset)
        assert b" ready." in fh.read()
    row = next(r for r in cluster.status() if r.name == "celery-1")
    assert row.running and row.restarts == 1


def test_a_deliberately_stopped_service_is_not_restarted(cluster: LocalCluster) -> None:
    restarts = _restarts(cluster, "app-2")
    cluster.stop_service("app-2")
    assert cluster.process("app-2").supervision["state"] == "stopped"
    # Give the watchdog a chance to misbehave: it notices a death within a tick.
    ticks = [cluster.status() for _ in range(8)]
    assert all(not next(r for r in t if r.name == "app-2").running for t in ticks)
    cluster.start_service("app-2")
    row = next(r for r in cluster.status() if r.name == "app-2")
    assert row.healthy and row.restarts == restarts and row.supervision == "running"


def test_an_app_server_that_cannot_start_ends_in_a_crash_loop_and_up_revives_it(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    flag = cluster.state_dir / "refuse-to-start"
    restarts = _restarts(cluster, "app-2")
    flag.touch()
    try:
        before = cluster.process("app-2")
        _kill9(before)

        def looping() -> bool:
            return cluster.process("app-2").supervision.get("state") == "crash-loop"

        assert wait_until(looping, 120, interval=0.2), cluster.process("app-2").supervision
        proc = cluster.process("app-2")
        # The limit: 5 restarts within the window, then the watchdog gave up.
        assert proc.supervision["restarts"] == restarts + 5
        assert len(proc.supervision["recent"]) == 5
        assert "exit status 3" in proc.supervision["last_exit"]
        assert not proc.alive()
        row = next(r for r in cluster.status() if r.name == "app-2")
        assert row.supervision == "crash-loop" and not row.running
        # It stays given up: no further restart while the cause is there.
        later = [_restarts(cluster, "app-2") for _ in range(8)]
        assert set(later) == {restarts + 5}
        # `djscale cluster status` says so, and fails.
        assert cli.main(["cluster", "status", "--topology", cluster.topology.source,
                         "--state-dir", str(cluster.state_dir)]) == 1
        line = next(ln for ln in capsys.readouterr().out.splitlines()
                    if ln.startswith("app-2 "))
        assert "crash-loop" in line and "last exit: exit status 3" in line, line
    finally:
        flag.unlink()
    # Fixed: `up` starts it afresh, and the watchdog watches it again.
    cluster.up(only=("app", "watchdog"))
    row = next(r for r in cluster.status() if r.name == "app-2")
    assert row.healthy and row.supervision == "running"


def test_down_stops_the_watchdog_first_and_leaves_nothing_running(
        cluster: LocalCluster) -> None:
    procs = cluster.processes()
    assert "watchdog" in {p.name for p in procs}
    cluster.down()
    for proc in cluster.processes():
        assert proc.pid == 0 and proc.supervision.get("state", "stopped") == "stopped"
    for proc in procs:
        assert not pid_alive(proc.pid), proc.name
        assert group_members(proc.pid) == [], proc.name
    # Nothing came back (the watchdog was stopped before the services).
    assert [r.name for r in cluster.status() if r.running] == []
    cluster.up(only=PARTS)  # for the other tests of this module, whatever their order
    assert all(r.healthy for r in cluster.status())
