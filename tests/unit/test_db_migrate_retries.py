"""Retries after lock timeouts: which errors, how often, how long between; the timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import OperationalError

from djscale import conf
from djscale.db.migrate import LockRetriesExhausted, RetryPolicy, is_lock_error, with_retries
from djscale.errors import TopologyError
from djscale.settings import from_topology
from djscale.topology import parse


class _PgError(Exception):
    """Stands for a psycopg error: what matters is its ``sqlstate``."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str) -> OperationalError:
    """An error as Django raises it: its cause is the driver's error."""
    error = OperationalError("canceling statement due to lock timeout")
    error.__cause__ = _PgError(sqlstate)
    return error


NO_WAIT = RetryPolicy(attempts=3, backoff=0.0, backoff_max=0.0)


def test_lock_timeouts_and_deadlocks_are_lock_errors_others_are_not() -> None:
    assert is_lock_error(_wrapped("55P03")) and is_lock_error(_wrapped("40P01"))
    assert not is_lock_error(_wrapped("23505")) and not is_lock_error(ValueError("x"))


def test_an_attempt_that_failed_on_a_lock_runs_again_until_it_succeeds() -> None:
    calls: list[int] = []
    retried: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _wrapped("55P03")
        return "done"

    assert with_retries(attempt, NO_WAIT, on_retry=lambda n, p, e: retried.append(n)) == "done"
    assert len(calls) == 3 and retried == [1, 2]


def test_the_last_failed_attempt_says_how_many_were_made() -> None:
    def attempt() -> None:
        raise _wrapped("55P03")

    with pytest.raises(LockRetriesExhausted, match=r"gave up after 3 attempt\(s\), each "
                       "failing to get a lock in time: canceling statement due to lock"):
        with_retries(attempt, NO_WAIT)


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise _wrapped("23505")

    with pytest.raises(OperationalError):
        with_retries(attempt, NO_WAIT)
    assert calls == [1]


def test_back_off_doubles_up_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(attempts=10, backoff=1.0, backoff_max=5.0)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        delay = policy.delay(attempt)
        assert base / 2 <= delay <= base, (attempt, delay)


def test_lock_timeout_comes_from_the_topology_and_djscale_overrides_it(tmp_path: Path) -> None:
    derived = from_topology(parse({"postgres": {"migration_lock_timeout_ms": 750,
                                                "port": 5432},
                                   "redis": {"port": 6379}}),
                            state_dir=tmp_path)["DJSCALE_DERIVED"]
    cfg, problems = conf.build(None, derived)
    assert not problems and cfg.migrations.lock_timeout_ms == 750
    cfg, _ = conf.build({"MIGRATIONS": {"LOCK_TIMEOUT_MS": 300}}, derived)
    assert cfg.migrations.lock_timeout_ms == 300


def test_a_shard_cannot_set_its_own_migration_lock_timeout() -> None:
    with pytest.raises(TopologyError, match="migration_lock_timeout_ms"):
        parse({"shards": [{"name": "shard1", "migration_lock_timeout_ms": 5}]})
