"""djscale.conf: the merge of DJSCALE_DERIVED and DJSCALE, validation, reset, the reference."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from djscale import conf
from djscale.errors import ConfigurationError
from djscale.topology import REDIS_MODES, REPLICA_POLICIES, SHARDING_MODES

ROOT = Path(__file__).resolve().parents[2]
DATABASES: dict[str, dict[str, Any]] = {"default": {}, "default_replica1": {}, "shard1": {}}
DERIVED: dict[str, Any] = {
    "REPLICATION_GROUPS": {"default": {"PRIMARY": "default", "REPLICAS": ["default_replica1"],
                                       "MAX_LAG_SECONDS": 5.0}},
    "SHARDING": {"ALIASES": ["shard1"], "LOGICAL_SHARDS": 64},
    "TRUSTED_PROXIES": ["127.0.0.1"],
    "APP_SERVERS": 2,
}


def _build(user: dict[str, Any] | None = None, derived: dict[str, Any] | None = None,
           **kwargs: Any) -> tuple[conf.DjscaleSettings, list[conf.Problem]]:
    return conf.build(user, DERIVED if derived is None else derived, databases=DATABASES,
                      **kwargs)


def _ids(problems: list[conf.Problem]) -> list[str]:
    return [p.id for p in problems]


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "settings-reference.md").read_text(encoding="utf-8")
    assert committed == conf.markdown(), (
        "docs/settings-reference.md is out of date: run "
        "`python -m djscale.conf --markdown --output docs/settings-reference.md`")


def test_the_reference_names_every_key_with_its_default() -> None:
    text = conf.markdown()
    for key in ('["REPLICATION_GROUPS"]["<name>"]["FALLBACK"]', '["HEALTH"]["TIMEOUT"]',
                '["SERVICES"]["<name>"]["BREAKER"]["WINDOW"]', '["SESSIONS"]["RETRY_FOR"]',
                '["CACHE_WARMERS"]', '["METRICS_TOKEN"]', '["QUERIES"]["SAMPLE_RATE"]'):
        assert f"`DJSCALE{key}`" in text, key
    assert "| `DJSCALE[\"HEALTH\"][\"TIMEOUT\"]` | float | `1.0` |" in text


def test_user_settings_merge_over_the_derived_ones_key_by_key() -> None:
    user = {"REPLICATION_GROUPS": {"default": {"POLICY": "least_lag"}},
            "HEALTH": {"TOKEN": "t"}, "TRUSTED_PROXIES": ["10.0.0.0/8"]}
    built, problems = _build(user)
    assert problems == []
    group = built.replication.groups["default"]
    assert (group.primary, group.replicas, group.policy) == (
        "default", ("default_replica1",), "least_lag")
    assert built.health.token == "t"
    assert built.http.trusted_proxies == ("10.0.0.0/8",)   # lists are replaced, not joined
    assert built.sharding.logical_shards == 64


@pytest.mark.parametrize("order", ["djscale-first", "from-topology-first"])
def test_either_order_of_djscale_and_from_topology_keeps_the_replication_groups(
        order: str) -> None:
    from djscale.settings import from_topology
    from djscale.topology import parse

    topology = parse({"postgres": {"port": 5432, "replicas": 1, "replica_ports": [5433]},
                      "redis": {"port": 6379}, "lb": {"host": "10.1.2.3"}})
    namespace: dict[str, Any] = {}
    snippet = {"DJSCALE": {"HEALTH": {"TOKEN": "s3cret"}, "TRUSTED_PROXIES": ["10.1.2.3"]}}
    if order == "djscale-first":
        namespace.update(snippet)
        namespace.update(from_topology(topology, state_dir="/nonexistent"))
    else:
        namespace.update(from_topology(topology, state_dir="/nonexistent"))
        namespace.update(snippet)
    assert "DJSCALE" in namespace and "DJSCALE_DERIVED" in namespace
    built, problems = conf.build(namespace["DJSCALE"], namespace["DJSCALE_DERIVED"],
                                 databases=namespace["DATABASES"])
    assert [p for p in problems if p.error] == []
    assert built.replication.groups["default"].replicas == ("default_replica1",)
    assert built.health.token == "s3cret"


def test_defaults_are_the_dataclass_defaults() -> None:
    built, problems = conf.build({}, {}, databases={})
    assert problems == []
    assert built.health == conf.HealthSettings()
    assert built.events == conf.EventsSettings()
    assert built.replication.refresh_seconds == 1.0
    assert built.deployment.app_servers == 1


def test_query_defaults_follow_debug() -> None:
    assert (_build(debug=True)[0].queries.n_plus_one, _build(debug=True)[0].queries.sample_rate
            ) == ("raise", 1.0)
    assert (_build(debug=False)[0].queries.n_plus_one, _build()[0].queries.sample_rate
            ) == ("log", 0.1)
    assert _build({"QUERIES": {"N_PLUS_ONE": "off"}}, debug=True)[0].queries.sample_rate == 0.1


@pytest.mark.parametrize(("user", "check_id", "text"), [
    ({"TRUSTED_PROXIES": ["lb.example.com"]}, "djscale.E001", "not an IP address"),
    ({"HEALTH": {"TIMEOUT": 0}}, "djscale.E002", 'DJSCALE["HEALTH"]["TIMEOUT"] = 0'),
    ({"HEALTH": {"TIMEOUTS": 1}}, "djscale.E002", "unknown key 'TIMEOUTS'"),
    ({"PUBLIC_CACHE_PATHS": [("(unclosed", 5)]}, "djscale.E002", "regular expression"),
    ({"PUBLIC_CACHE_PATHS": [("^/x", -5)]}, "djscale.E002", ">= 0"),
    ({"QUERIES": {"THRESHOLD": 1}}, "djscale.E110", "THRESHOLD"),
    ({"REPLICATION_GROUPS": {"default": {"POLICY": "fastest"}}}, "djscale.E120", "POLICY"),
    ({"REPLICATION_GROUPS": {"default": {"REPLICAS": ["nope"]}}}, "djscale.E120", "'nope'"),
    ({"REPLICATION_GROUPS": {"default": {"WEIGHTS": {"default_replica1": -1}}}},
     "djscale.E120", "WEIGHTS"),
    ({"SHARDING": {"ALIASES": ["shard9"]}}, "djscale.E120", "'shard9'"),
    ({"SERVICES": {"users": {"TIMEOUT": 1}}}, "djscale.E120", "URLS"),
    ({"EVENTS": {"REDELIVER_AFTER": 0}}, "djscale.E120", "REDELIVER_AFTER"),
    ({"APP_SERVERS": True}, "djscale.E120", "an integer"),
    ({"HEALTH": "fast"}, "djscale.E002", "expected a dict"),
])
def test_a_bad_value_is_one_error_naming_the_key(user: dict[str, Any], check_id: str,
                                                 text: str) -> None:
    _, problems = _build(user)
    assert [p.id for p in problems if p.error] == [check_id], problems
    assert text in problems[0].message


def test_unknown_keys_and_deprecated_names_are_warnings() -> None:
    built, problems = _build({"HEALTHCHECK": {}, "SHARDS": ["shard1"]}, derived={},
                             legacy={"DJSCALE_SESSIONS": {"RETRY_FOR": 9},
                                     "DJSCALE_CACHE_WARMERS": ["app.warmers"]})
    assert sorted(_ids(problems)) == ["djscale.W120"] + ["djscale.W121"] * 3
    assert not any(p.error for p in problems)
    assert built.sharding.aliases == ("shard1",)
    assert built.sessions.retry_for == 9
    assert built.cache.warmers == ("app.warmers",)


def test_the_literal_choices_match_the_topology() -> None:
    hints = typing.get_type_hints(conf.ReplicationGroup)
    assert typing.get_args(hints["policy"]) == REPLICA_POLICIES
    assert typing.get_args(typing.get_type_hints(conf.CacheSettings)["redis_mode"]) == REDIS_MODES
    assert typing.get_args(typing.get_type_hints(conf.ShardingSettings)["mode"]) == \
        SHARDING_MODES


def test_get_raises_the_first_error_and_the_check_lists_them() -> None:
    with override_settings(DJSCALE={"HEALTH": {"TIMEOUT": -1}, "QUERIES": {"BUDGET": "x"}}):
        with pytest.raises(ConfigurationError, match=r'HEALTH.*1 more problem'):
            conf.get()
        assert conf.get(validate=False).health.timeout == 1.0   # the default stands in
        assert sorted(str(m.id) for m in conf.check_settings()) == ["djscale.E002",
                                                                  "djscale.E110"]


def test_the_view_is_rebuilt_when_a_watched_setting_changes() -> None:
    before = conf.get(validate=False)
    assert conf.get(validate=False) is before    # built once, then kept
    with override_settings(DJSCALE={"METRICS_TOKEN": "abc"}):
        assert conf.get().metrics.token == "abc"
        with override_settings(DJSCALE_DERIVED={"APP_SERVERS": 7}):
            assert conf.get().deployment.app_servers == 7
            assert conf.get().metrics.token == "abc"
    assert conf.get(validate=False).metrics.token == before.metrics.token
