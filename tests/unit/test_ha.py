"""Primary high availability on Patroni: topology keys, settings, patroni.yml (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from djscale.chaos.load import LoadResult, Sample
from djscale.chaos.primary import judge
from djscale.chaos.scenarios import ChaosReport
from djscale.cluster import ha
from djscale.cluster.patroni import ClusterView, Member, write_config
from djscale.errors import TopologyError
from djscale.settings import from_topology
from djscale.topology import parse


def _ha(**postgres: object) -> dict[str, object]:
    return {"postgres": {"ha": "patroni", "port": 5432, "replicas": 2,
                         "replica_ports": [5433, 5434], **postgres},
            "redis": {"port": 6379}}


def test_ha_defaults_to_none_and_patroni_keys_have_patroni_defaults() -> None:
    assert parse({}).postgres.ha == "none"
    group = parse(_ha()).postgres
    assert (group.ha, group.synchronous, group.ha_ttl, group.ha_loop_wait,
            group.ha_retry_timeout, group.maximum_lag_on_failover) == (
        "patroni", False, 20, 1, 5, 1024 * 1024)


def test_shards_inherit_ha_and_may_override_it() -> None:
    topo = parse({**_ha(synchronous=True),
                  "shards": [{"name": "shard1"}, {"name": "shard2", "synchronous": False}]})
    assert [(g.ha, g.synchronous) for g in topo.shards] == [
        ("patroni", True), ("patroni", False)]


@pytest.mark.parametrize(("postgres", "message"), [
    ({"ha": "stolon"}, "postgres.ha = 'stolon' is invalid"),
    ({"synchronous": True}, 'needs postgres.ha = "patroni"'),
    ({"ha": "patroni", "ha_ttl": 10}, "ha_ttl"),
    ({"ha": "patroni", "ha_loop_wait": 10, "ha_retry_timeout": 10},
     "loop_wait \\+ 2 \\* retry_timeout <= ttl"),
])
def test_invalid_ha_settings_name_the_key(postgres: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse({"postgres": postgres})


def test_pgbouncer_in_front_of_a_patroni_group_is_refused() -> None:
    with pytest.raises(TopologyError, match="PgBouncer would keep sending writes"):
        parse({"postgres": {"ha": "patroni"}, "pgbouncer": {"enabled": True}})


def test_primary_alias_lists_every_node_and_asks_for_the_read_write_one(
        tmp_path: Path) -> None:
    dbs = from_topology(parse(_ha()), state_dir=tmp_path)["DATABASES"]
    assert dbs["default"]["HOST"] == "127.0.0.1,127.0.0.1,127.0.0.1"
    assert dbs["default"]["PORT"] == "5432,5433,5434"
    assert dbs["default"]["OPTIONS"]["target_session_attrs"] == "read-write"


def test_replica_aliases_prefer_standbys_starting_at_their_own_node(tmp_path: Path) -> None:
    dbs = from_topology(parse(_ha()), state_dir=tmp_path)["DATABASES"]
    assert dbs["default_replica1"]["PORT"] == "5433,5434,5432"
    assert dbs["default_replica2"]["PORT"] == "5434,5432,5433"
    for alias in ("default_replica1", "default_replica2"):
        assert dbs[alias]["OPTIONS"]["target_session_attrs"] == "prefer-standby"
        assert dbs[alias]["TEST"] == {"MIRROR": "default"}


def test_patroni_yml_maps_the_group_settings(tmp_path: Path) -> None:
    group = parse(_ha(synchronous=True, ha_ttl=30, maximum_lag_on_failover=4096)).postgres
    path = write_config(tmp_path / "patroni.yml", group=group, name="pg-default",
                        host="127.0.0.1", port=5432, api_port=8008,
                        data_dir=tmp_path / "data", etcd=[("127.0.0.1", 2379)])
    config = json.loads(path.read_text())  # JSON is YAML: Patroni reads it as is
    dcs = config["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["synchronous_mode"], dcs["synchronous_mode_strict"],
            dcs["maximum_lag_on_failover"]) == (30, True, True, 4096)
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["full_page_writes"] == "on"  # pg_rewind needs it
    assert config["postgresql"]["listen"] == "127.0.0.1:5432"
    assert config["restapi"]["listen"] == "127.0.0.1:8008"
    assert config["etcd3"]["hosts"] == ["127.0.0.1:2379"]
    assert config["postgresql"]["authentication"]["superuser"] == {"username": "djscale"}


def test_one_etcd_member_on_one_machine_three_over_hosts() -> None:
    assert ha.etcd_names(parse({})) == [("etcd-1", "127.0.0.1")]
    topo = parse({"hosts": {"a": {"address": "10.0.0.1"}, "b": {"address": "10.0.0.2"}},
                  "postgres": {"host": "a"}})
    assert ha.etcd_names(topo) == [("etcd-1", "10.0.0.1"), ("etcd-2", "10.0.0.2"),
                                   ("etcd-3", "10.0.0.1")]


def test_cluster_view_knows_the_leader_only_while_it_runs() -> None:
    leader = Member("pg-a", "leader", "running", "h", 1, 3, None)
    replica = Member("pg-b", "sync_standby", "running", "h", 2, 3, 0)
    assert ClusterView((leader, replica)).leader == leader
    assert ClusterView((leader, replica)).timeline == 3
    stopped = Member("pg-a", "leader", "stopped", "h", 1, 3, None)
    assert ClusterView((stopped, replica)).leader is None


def _report(*, synchronous: bool, lost: int) -> ChaosReport:
    report = ChaosReport("kill-primary-node", "f", "e", requests=3, ttl_seconds=20,
                         synchronous=synchronous, rejoined=True, lost=lost, duplicated=0,
                         fault_monotonic=10.0)
    return report


def _load(*samples: tuple[float, float, int, str]) -> LoadResult:
    return LoadResult([Sample(*s) for s in samples])


def test_judge_passes_fast_503s_and_writes_back_within_ttl_plus_5() -> None:
    load = _load((9.0, 0.01, 200, "GET"), (11.0, 0.05, 503, "POST"),
                 (30.0, 0.02, 201, "POST"))
    report = _report(synchronous=True, lost=0)
    assert judge(report, load, 9.5, 31.0)
    assert report.first_write_seconds == pytest.approx(20.02)
    assert report.write_gap_seconds == pytest.approx(20.02)  # fault at 10 -> 30.02 ok


def test_the_write_outage_of_a_switchover_starts_at_the_first_refusal() -> None:
    # The old leader takes writes for a while after the switchover began (t=10).
    load = _load((10.5, 0.01, 201, "POST"), (12.0, 0.01, 503, "POST"),
                 (12.2, 0.01, 503, "POST"), (12.9, 0.02, 201, "POST"))
    report = _report(synchronous=False, lost=0)
    assert judge(report, load, 9.5, 13.0)
    assert report.first_write_seconds == pytest.approx(0.51)
    assert report.write_gap_seconds == pytest.approx(12.92 - 10.51)


def test_judge_fails_a_slow_503_a_late_write_and_a_synchronous_loss() -> None:
    slow = _load((11.0, 1.5, 503, "POST"), (30.0, 0.02, 201, "POST"))
    assert not judge(_report(synchronous=False, lost=0), slow, 9.5, 31.0)
    late = _load((40.0, 0.02, 201, "POST"))
    assert not judge(_report(synchronous=False, lost=0), late, 9.5, 41.0)
    ok = _load((30.0, 0.02, 201, "POST"))
    assert not judge(_report(synchronous=True, lost=1), ok, 9.5, 31.0)
    # Asynchronous: a loss is counted and explained, not a failure of the scenario.
    report = _report(synchronous=False, lost=1)
    assert judge(report, ok, 9.5, 31.0)
    assert any("maximum_lag_on_failover" in n for n in report.notes)


def _isolation(rounds: list[tuple[float, dict[str, str]]]) -> ChaosReport:
    """Judge direct-write rounds of an isolate-primary run cut at t=10 and healed at t=40."""
    from djscale.chaos.primary import WriteWatch, _judge_isolation
    from djscale.chaos.scenarios import _Fault

    watch = WriteWatch([("a", "h", 1), ("b", "h", 2), ("c", "h", 3)], "u", "d", rounds=rounds)
    report = ChaosReport("isolate-primary", "", "")
    fault = _Fault(cluster=None, report=report, target="a", watch=watch)  # type: ignore[arg-type]
    _judge_isolation(fault, 10.0, 40.0)
    return report


ACCEPT, READ_ONLY = "accepted", "refused: cannot execute CREATE TABLE in a read-only transaction"


def test_isolation_passes_when_the_old_leader_stops_before_another_starts() -> None:
    report = _isolation([
        (9.0, {"a": ACCEPT, "b": READ_ONLY, "c": READ_ONLY}),
        (12.0, {"a": ACCEPT, "b": READ_ONLY, "c": READ_ONLY}),  # not demoted yet
        (16.0, {"a": READ_ONLY, "b": READ_ONLY, "c": READ_ONLY}),  # demoted: nobody writes
        (31.0, {"a": READ_ONLY, "b": ACCEPT, "c": READ_ONLY}),  # b promoted
        (45.0, {"a": READ_ONLY, "b": ACCEPT, "c": READ_ONLY}),
    ])
    assert report.split_brain is False and report.old_refused is True
    assert "accepted its last 2.00 s after the cut, refused from 6.00 s" in report.notes[-1]
    assert "b accepted from 21.00 s" in report.notes[-1]


def test_two_writable_nodes_in_one_round_are_a_split_brain() -> None:
    report = _isolation([
        (12.0, {"a": ACCEPT, "b": READ_ONLY, "c": READ_ONLY}),
        (31.0, {"a": ACCEPT, "b": ACCEPT, "c": READ_ONLY}),
        (35.0, {"a": READ_ONLY, "b": ACCEPT, "c": READ_ONLY}),
    ])
    assert report.split_brain is True
    assert report.old_refused is True  # in the end: too late
    assert "at most 2 node(s)" in report.notes[-1]


def test_a_cut_off_leader_that_never_refuses_fails_the_isolation() -> None:
    report = _isolation([(t, {"a": ACCEPT, "b": READ_ONLY, "c": READ_ONLY})
                         for t in (12.0, 20.0, 30.0)])
    assert report.old_refused is False and report.split_brain is False
    assert "no other node accepted writes while it was cut off" in report.notes[-1]
