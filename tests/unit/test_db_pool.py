"""The replica pool's choice: health, lag limits, read-your-writes positions, policies."""

from __future__ import annotations

import random
from collections import Counter

from djscale.db.config import GroupConfig
from djscale.db.pool import ReplicaHealth, ReplicaPool

R1, R2 = "default_replica1", "default_replica2"


def group(**kw: object) -> GroupConfig:
    base: dict[str, object] = {"name": "default", "primary": "default", "replicas": (R1, R2),
                               "max_lag_seconds": 5.0, "max_lag_bytes": 1000}
    return GroupConfig(**{**base, **kw})  # type: ignore[arg-type]


def healthy(alias: str, *, lsn: int = 100, lag_bytes: int = 0, lag_seconds: float = 0.0,
            up: bool = True) -> ReplicaHealth:
    return ReplicaHealth(alias, up=up, replay_lsn=lsn, lag_bytes=lag_bytes,
                         lag_seconds=lag_seconds)


def pool(g: GroupConfig | None = None, *healths: ReplicaHealth) -> ReplicaPool:
    p = ReplicaPool(g or group(), rng=random.Random(7))
    for h in healths:
        p.update(h)
    return p


def test_an_unmeasured_replica_is_not_used() -> None:
    assert pool().choose() is None


def test_random_policy_uses_every_usable_replica() -> None:
    p = pool(None, healthy(R1), healthy(R2))
    assert set(Counter(p.choose() for _ in range(200))) == {R1, R2}


def test_a_down_replica_is_skipped() -> None:
    p = pool(None, healthy(R1, up=False), healthy(R2))
    assert {p.choose() for _ in range(50)} == {R2}


def test_replicas_over_max_lag_in_bytes_or_seconds_are_skipped() -> None:
    p = pool(None, healthy(R1, lag_bytes=1001), healthy(R2))
    assert p.usable() == [R2]
    p = pool(None, healthy(R1), healthy(R2, lag_seconds=5.1))
    assert p.usable() == [R1]


def test_read_your_writes_needs_a_replica_that_replayed_the_token() -> None:
    p = pool(None, healthy(R1, lsn=90), healthy(R2, lsn=120))
    assert p.usable(min_lsn=100) == [R2]
    assert p.choose(min_lsn=121) is None
    assert p.usable(min_lsn=None) == [R1, R2]


def test_least_lag_picks_the_replica_furthest_ahead() -> None:
    p = pool(group(policy="least_lag"), healthy(R1, lag_bytes=500), healthy(R2, lag_bytes=10))
    assert {p.choose() for _ in range(50)} == {R2}


def test_weighted_policy_follows_the_weights() -> None:
    p = pool(group(policy="weighted", weights={R1: 0, R2: 3}), healthy(R1), healthy(R2))
    assert {p.choose() for _ in range(50)} == {R2}
    p = pool(group(policy="weighted", weights={R1: 3}), healthy(R1), healthy(R2))
    counts = Counter(p.choose() for _ in range(2000))
    assert counts[R1] > 2 * counts[R2]


def test_mark_down_takes_a_replica_out_until_a_probe_finds_it_up() -> None:
    p = pool(None, healthy(R1), healthy(R2))
    p.mark_down(R1, "connection refused")
    assert p.usable() == [R2]
    assert p.health()[R1].error == "connection refused"
    p.update(healthy(R1))
    assert p.usable() == [R1, R2]


def test_lag_in_time_is_bounded_by_the_primary_positions_seen() -> None:
    now = [100.0]
    p = ReplicaPool(group(), clock=lambda: now[0])
    p.record_primary(1000, at=90.0)
    p.record_primary(2000, at=95.0)
    p.record_primary(3000, at=100.0)
    # Replayed what the primary had at t=95: at most 5 s behind, however old its last
    # replayed commit is.
    assert p.bound_lag_seconds(2500) == 5.0
    assert p.bound_lag_seconds(3000) == 0.0
    assert p.bound_lag_seconds(500) is None  # older than the history: cannot say


def _timed(alias: str, ms: float) -> ReplicaHealth:
    return ReplicaHealth(alias, up=True, replay_lsn=100, lag_bytes=0, lag_seconds=0.0,
                         latency=ms / 1000)


def test_a_replica_slower_than_its_limit_in_two_probes_in_a_row_gets_no_reads() -> None:
    p = pool(group(replica_max_latency_ms=250), _timed(R1, 5), _timed(R2, 5))
    p.update(_timed(R1, 320))  # one slow probe: a busy machine, not yet a slow replica
    assert p.usable() == [R1, R2]
    p.update(_timed(R1, 310))
    assert p.usable() == [R2]
    assert p.health()[R1].slow
    p.update(_timed(R1, 4))  # one probe in time brings it back
    assert p.usable() == [R1, R2]


def test_a_down_probe_between_two_slow_ones_does_not_make_the_replica_slow() -> None:
    p = pool(group(replica_max_latency_ms=250), _timed(R1, 400), _timed(R2, 5))
    p.update(ReplicaHealth(R1, up=False, error="no answer"))
    p.update(_timed(R1, 400))
    assert p.usable() == [R1, R2]


def test_a_latency_limit_of_zero_never_makes_a_replica_slow() -> None:
    p = pool(group(replica_max_latency_ms=0), _timed(R1, 5000), _timed(R1, 5000),
             _timed(R2, 5))
    assert p.usable() == [R1, R2]
