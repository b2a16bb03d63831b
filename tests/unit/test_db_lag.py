"""The one replica-lag measure (djscale.db.lag): pure arithmetic, no database."""

from __future__ import annotations

from djscale.db.lag import PrimaryHistory, ReplicaLag, ReplicaPosition, lag, measure


def test_a_replica_that_replayed_what_the_primary_has_is_not_behind() -> None:
    assert lag(primary_lsn=5000, replay_lsn=5000, since_last_replay=3600.0) == ReplicaLag(0, 0.0)
    # measured after the primary, a caught-up replica may even be ahead
    assert lag(primary_lsn=5000, replay_lsn=5100, since_last_replay=3600.0) == ReplicaLag(0, 0.0)


def test_bytes_are_counted_against_the_primary_not_against_what_the_replica_received() -> None:
    # A replica whose WAL receiver stopped has replayed all it received; the primary moved on.
    measured = lag(primary_lsn=9000, replay_lsn=5000, since_last_replay=20.0)
    assert measured == ReplicaLag(4000, 20.0)


def test_seconds_are_the_smallest_upper_bound_known() -> None:
    # An idle hour, then one fresh commit: the last replayed commit is an hour old, but the
    # primary was seen at the replayed position 0.5 s ago.
    measured = lag(primary_lsn=9000, replay_lsn=5000, since_last_replay=3600.0,
                   passed_at=99.5, now=100.0)
    assert measured == ReplicaLag(4000, 0.5)
    assert lag(primary_lsn=9000, replay_lsn=5000, passed_at=80.0, now=100.0).lag_seconds == 20.0


def test_the_lag_is_unknown_without_a_primary_or_a_replay_position() -> None:
    assert lag(primary_lsn=None, replay_lsn=5000, since_last_replay=1.0) == ReplicaLag(None, None)
    assert lag(primary_lsn=5000, replay_lsn=None) == ReplicaLag(None, None)
    assert lag(primary_lsn=9000, replay_lsn=5000) == ReplicaLag(4000, None)


def test_the_history_tells_when_the_primary_was_last_at_a_replayed_position() -> None:
    history = PrimaryHistory(size=3)
    for at, lsn in ((10.0, 1000), (11.0, 2000), (12.0, 3000), (13.0, 4000)):
        history.record(lsn, at)
    assert history.passed_at(3500) == 12.0
    assert history.passed_at(4000) == 13.0
    assert history.passed_at(1500) is None  # older than the kept samples


def test_a_stalled_replica_s_lag_grows_with_the_history() -> None:
    history = PrimaryHistory()
    history.record(5000, 0.0)  # the replica stalls at 5000; the primary goes on
    for t in range(1, 21):
        history.record(5000 + t * 100, float(t))
    position = ReplicaPosition(in_recovery=True, replay_lsn=5000, since_last_replay=None)
    first = measure("r", 5100, position, history=history, now=1.0, record=False)
    later = measure("r", 7000, position, history=history, now=20.0, record=False)
    assert first.lag_seconds == 1.0
    assert later == ReplicaLag(2000, 20.0)
