"""Network faults between hosts (network namespaces): `djscale chaos partition` and `delay`.

The demo project runs across five "machines" on a private bridge (``db``, ``replica1``,
``cache``, ``app``, ``lb``; :class:`djscale.testing.netns.HostNetwork`). Each fault lasts a
few seconds under load through the load balancer, and each test proves three things: the
rules are in place in the namespaces while the fault lasts, the fault has its effect (the
cut-off or slowed replica leaves the read set within two probe rounds and returns after,
no request fails, request deadlines hold), and nothing is left in any namespace afterwards,
also when the run is interrupted (SIGINT, SIGTERM), fails, or is killed outright (the next
run removes the remains). Long faults (60 s partitions) are `djscale chaos` runs whose
output is in docs/reliability.md.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from djscale.chaos import ChaosOptions, ChaosReport, run_scenario
from djscale.chaos.network import (
    Delay,
    NetworkFaults,
    Partition,
    installed,
    remove_leftovers,
    resolve_hosts,
)
from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory
from djscale.testing.netns import HostNetwork, unavailable_reason
from tests.integration.helpers import DEFAULT_SIGNALS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"
HOSTS = ("db", "replica1", "cache", "app", "lb")

_reason = unavailable_reason()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(_reason is not None, reason=_reason or "")]

OPTIONS = ChaosOptions(read_path="/whoami", requests=200_000, max_seconds=60, concurrency=6,
                       fault_after=2.0, fault_seconds=4.0)


@pytest.fixture(scope="module")
def net() -> Iterator[HostNetwork]:
    with HostNetwork(HOSTS) as network:
        yield network


@pytest.fixture(scope="module")
def cluster(net: HostNetwork, djscale_cluster_factory: ClusterFactory,
            ) -> Iterator[LocalCluster]:
    topology = tomllib.loads(DEMO.read_text(encoding="utf-8"))
    topology["hosts"] = net.hosts_table()
    topology["postgres"].update(host="db", replicas=1, replica_hosts=["replica1"])
    topology["redis"]["host"] = "cache"
    topology["app"].update(servers=1, workers=2, weights=[1], hosts=["app"])
    topology["lb"]["host"] = "lb"
    booted = djscale_cluster_factory(topology, source=DEMO, name="netchaos",
                                     parts=("postgres", "redis", "migrate", "app", "lb"))
    try:
        yield booted
    finally:
        booted.down(purge=True)  # before the namespaces go


def _run_watching(cluster: LocalCluster, scenario: str, options: ChaosOptions,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[ChaosReport, dict[str, list[str]]]:
    """Run a scenario; return its report and what was installed while its fault lasted."""
    seen: dict[str, list[str]] = {}
    install = NetworkFaults.install

    def install_and_look(self: NetworkFaults) -> None:
        install(self)
        seen.update(installed(cluster.topology))  # the rules are in place right now

    monkeypatch.setattr(NetworkFaults, "install", install_and_look)
    report = run_scenario(cluster, scenario, options)
    return report, seen


def test_a_partition_takes_the_replica_out_of_reads_and_leaves_no_rule(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    options = replace(OPTIONS, target="app", target_args=("replica1",))
    report, seen = _run_watching(cluster, "partition", options, monkeypatch)
    print(report.text())
    assert seen == {"app": ["nftables table inet djscale_chaos"],
                    "replica1": ["nftables table inet djscale_chaos"]}
    assert report.target_replicas == ["default_replica1"]
    assert report.passed, report.text()
    assert report.reads_failed == 0 and report.requests > 100
    assert report.target_reads_back_seconds is not None
    assert installed(cluster.topology) == {}


def test_a_delayed_replica_leaves_the_read_set_within_two_probe_rounds(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    options = replace(OPTIONS, target="replica1", target_args=("300",))
    report, seen = _run_watching(cluster, "delay", options, monkeypatch)
    print(report.text())
    assert set(seen) == {"replica1"}
    assert seen["replica1"] in (["netem qdisc"], ["iptables chain DJSCALE_CHAOS",
                                                  "packet delayer process"])
    assert report.passed, report.text()
    assert report.target_replicas == ["default_replica1"]
    assert installed(cluster.topology) == {}


def test_a_cache_partition_flushes_l1_and_serves_nothing_stale_after(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long enough for every listener to give up on its silent subscription (about 5 s).
    options = replace(OPTIONS, target="app", target_args=("cache",), read_path="/visits",
                      write_path="/visit", write_every=10,
                      count_sql="SELECT count(*) FROM demo_visit", read_tag="source",
                      verify_path="/visits", fault_seconds=12.0)
    report, seen = _run_watching(cluster, "partition", options, monkeypatch)
    print(report.text())
    assert set(seen) == {"app", "cache"}
    assert report.cache_cut and report.target_replicas == []
    assert report.passed, report.text()
    assert report.reads_failed == 0 and report.writes_failed == 0
    assert report.lost == 0 and report.duplicated == 0
    # Every app process seen before and after dropped its L1 (lost subscription, and
    # again once Redis answered or the listener was back), then filled it again, and no
    # answer afterwards was stale.
    assert report.l1_processes and report.l1_flushed_processes == report.l1_processes
    assert report.l1_flushes.get("subscription_lost", 0) >= report.l1_processes
    assert report.sources["during"].get("db", 0) > 0
    assert report.sources["after"].get("l1", 0) > 0
    assert report.stale_after == 0 and report.verified
    assert installed(cluster.topology) == {}


@pytest.mark.parametrize(("scenario", "args", "signum"), [
    ("partition", ["app", "replica1"], signal.SIGINT),
    ("delay", ["replica1", "200", "20", "1%"], signal.SIGTERM),
])
def test_an_interrupted_run_removes_its_rules(cluster: LocalCluster, scenario: str,
                                              args: list[str], signum: int) -> None:
    proc = subprocess.Popen(
        [*DEFAULT_SIGNALS, sys.executable, "-m", "djscale.cli", "chaos", scenario, *args,
         "--seconds", "60",
         "--fault-after", "0.5", "-t", cluster.topology.source,
         "--state-dir", str(cluster.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: bool(installed(cluster.topology)) or proc.poll() is not None,
                          30, interval=0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert installed(cluster.topology) == {}


def test_rules_are_removed_when_the_body_fails_and_after_a_run_killed_outright(
        net: HostNetwork, cluster: LocalCluster) -> None:
    topology = cluster.topology
    app, replica = resolve_hosts(topology, "app"), resolve_hosts(topology, "replica1")
    with pytest.raises(RuntimeError), NetworkFaults() as faults:
        faults.add(Partition(app, replica))
        assert installed(topology) != {}
        raise RuntimeError("boom")
    assert installed(topology) == {}

    # As if the process running these was SIGKILLed: nothing undoes them...
    NetworkFaults().add(Partition(app, replica))
    NetworkFaults().add(Delay(replica[0], 100))
    assert set(installed(topology)) == {"app", "replica1"}
    # ...until the next run removes them (a chaos run does this first).
    found = remove_leftovers(topology)
    assert set(found) == {"app", "replica1"}
    assert installed(topology) == {}
