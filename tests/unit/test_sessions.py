"""djscale.sessions settings: how many replica acks, how long to wait and retry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings

from djscale.errors import ConfigurationError
from djscale.sessions import durability


def _cache(cluster: bool) -> Any:
    return SimpleNamespace(l2=SimpleNamespace(cluster=cluster))


def test_a_redis_cluster_waits_for_one_replica_by_default_and_one_node_for_none() -> None:
    assert durability(_cache(True)) == (1, 0.1, 5.0)
    assert durability(_cache(False)) == (0, 0.1, 5.0)


@override_settings(DJSCALE={"SESSIONS": {"REPLICA_ACKS": 2, "ACK_TIMEOUT": "0.05",
                                         "RETRY_FOR": 20}})
def test_settings_override_the_defaults() -> None:
    assert durability(_cache(False)) == (2, 0.05, 20.0)


@override_settings(DJSCALE_SESSIONS={"REPLICA_ACKS": 3})
def test_the_deprecated_top_level_name_still_works() -> None:
    assert durability(_cache(False)) == (3, 0.1, 5.0)


@pytest.mark.parametrize(("given", "message"), [
    ({"REPLICAS": 1}, "unknown key 'REPLICAS'"),
    ({"ACK_TIMEOUT": "soon"}, "expected a number"),
    ({"RETRY_FOR": -1}, "expected a number >= 0"),
])
def test_bad_settings_say_what_is_wrong(given: dict[str, Any], message: str) -> None:
    with override_settings(DJSCALE={"SESSIONS": given}), pytest.raises(ConfigurationError,
                                                                        match=message):
        durability(_cache(True))
