"""Network faults (`djscale chaos partition` / `delay`): arguments and host names, no namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.chaos.network import Partition, parse_delay, resolve_hosts
from djscale.cli import _parser, main
from djscale.errors import ClusterError
from djscale.topology import HostSpec, parse

TOPOLOGY = parse({"hosts": {"app1": {"address": "10.77.200.2", "netns": "djs200-app1"},
                            "plain": {"address": "10.77.200.3"}},
                  "redis": {"host": "plain"}})


def test_delay_takes_milliseconds_jitter_and_a_loss_percentage() -> None:
    assert parse_delay(["300"]) == (300.0, 0.0, 0.0)
    assert parse_delay(["300ms", "50", "1.5%"]) == (300.0, 50.0, 1.5)


@pytest.mark.parametrize(("args", "message"), [
    ([], "HOST MS"), (["a lot"], "MS must be a number"), (["-5"], "must not be negative"),
    (["100", "200"], "jitter 200 ms is larger"), (["100", "0", "150%"], "over 100%"),
    (["1", "2", "3", "4"], "HOST MS"), (["100000"], "over a minute"),
])
def test_bad_delay_arguments_are_one_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_delay(args)


def test_an_unknown_host_names_the_known_ones() -> None:
    with pytest.raises(ClusterError, match=r"'nope' is neither a host.*app1, plain"):
        resolve_hosts(TOPOLOGY, "nope")


def test_a_host_without_a_namespace_cannot_be_partitioned() -> None:
    with pytest.raises(ClusterError, match="host 'plain' has no netns"):
        resolve_hosts(TOPOLOGY, "plain")


def test_a_service_names_the_host_it_runs_on() -> None:
    with pytest.raises(ClusterError, match="host 'plain' has no netns"):
        resolve_hosts(TOPOLOGY, "redis", {"redis": "10.77.200.3"})


def test_a_host_cannot_be_on_both_sides_of_a_partition() -> None:
    host = HostSpec("app1", "10.77.200.2", "djs200-app1")
    with pytest.raises(ClusterError, match="partitioned from itself: app1"):
        Partition((host,), (host,))


def test_the_command_line_takes_both_sides_and_the_delay_arguments() -> None:
    args = _parser().parse_args(["chaos", "partition", "app1,app2", "db-replica1",
                                 "--seconds", "60"])
    assert (args.scenario, args.target, args.more) == ("partition", "app1,app2",
                                                       ["db-replica1"])
    args = _parser().parse_args(["chaos", "delay", "db-replica1", "300", "50", "1%"])
    assert (args.target, args.more) == ("db-replica1", ["300", "50", "1%"])


def test_partition_without_a_running_cluster_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "djscale.toml"
    topology.write_text('[project]\nname = "x"\n', encoding="utf-8")
    code = main(["chaos", "partition", "app1", "db", "-t", str(topology),
                 "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == 2 and "cluster up" in err and "Traceback" not in err


def test_the_report_compares_l1_flushes_of_the_processes_seen_before_and_after() -> None:
    from djscale.chaos.load import LoadResult
    from djscale.chaos.scenarios import ChaosReport, _l1_flushes, _network_judge

    before = {11: ({"resubscribed": 1}, 0), 12: ({"resubscribed": 1}, 0),
              13: ({"resubscribed": 1}, 0)}
    after = {11: ({"resubscribed": 2, "subscription_lost": 1}, 4),  # flushed twice
             12: ({"resubscribed": 1}, 0),                          # did not flush
             14: ({"resubscribed": 1}, 0)}                          # not seen before
    report = ChaosReport("partition", "", "", requests=10, cache_cut=True)
    _l1_flushes(report, before, after)
    assert (report.l1_processes, report.l1_flushed_processes) == (2, 1)
    assert report.l1_flushes == {"resubscribed": 1, "subscription_lost": 1}
    assert report.l1_flushed_entries == 4
    assert "1 of 2 app processes" in report.text()
    # A cache partition of 10 s or more must have flushed every process seen twice...
    assert _network_judge(report, LoadResult(), 0.0, 12.0) is False
    assert "1 app processes cut off from Redis did not flush their L1" in report.notes
    # ...a shorter one may end before a listener notices, and a replica partition need not.
    assert _network_judge(ChaosReport("partition", "", "", requests=10, cache_cut=True,
                                      l1_processes=2, l1_flushed_processes=1),
                          LoadResult(), 0.0, 6.0) is True
    assert _network_judge(ChaosReport("partition", "", "", requests=10, l1_processes=2,
                                      l1_flushed_processes=0), LoadResult(), 0.0, 60.0) is True
