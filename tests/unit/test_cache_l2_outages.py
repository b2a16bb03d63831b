"""RedisL2.write_acked's retry budget is per outage of a node (no Redis needed)."""

from __future__ import annotations

from djscale.cache.l2 import UNAVAILABLE, RedisL2


def test_failures_less_than_the_budget_apart_are_one_outage_per_node() -> None:
    l2 = RedisL2(["redis://127.0.0.1:1/0"])
    assert l2._outage_began("a", 100.0, 5.0) == 100.0
    assert l2._outage_began("a", 104.0, 5.0) == 100.0  # still the same outage
    assert l2._outage_began("b", 104.5, 5.0) == 104.5  # another node: its own outage
    assert l2._outage_began("a", 109.5, 5.0) == 109.5  # 5.5 s without a failure: a new one


def test_an_unreachable_node_gives_up_after_the_budget_and_then_at_once() -> None:
    l2 = RedisL2(["redis://127.0.0.1:1/0"], connect_timeout=0.05)
    assert l2.write_acked("k", b"v", 10, replicas=0, ack_timeout=0.1,
                          retry_for=0.2) is UNAVAILABLE
    began, last = l2._outages["127.0.0.1:1"]
    assert last - began >= 0.1  # it kept trying within the budget
    assert l2.write_acked("k", b"v", 10, replicas=0, ack_timeout=0.1,
                          retry_for=0.2) is UNAVAILABLE
    assert l2._outages["127.0.0.1:1"][0] == began  # the same outage: no new budget
