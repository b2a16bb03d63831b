"""Migrations on two live shards: the guard, lock_timeout with retries, and resumption.

One cluster (``tests.onlineapp.scenario``: main database + 2 shards, a gunicorn app
server) serves ``onlineapp`` at release N; each test points ``ONLINEAPP_MIGRATIONS`` at
its own migrations package, so the tests do not depend on their order. The 1,000,000-row
version of the load test is ``python -m tests.onlineapp.scenario`` (docs/migrations.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from djscale.cluster import LocalCluster
from tests.onlineapp import scenario

pytestmark = pytest.mark.integration

UNSAFE = {"ONLINEAPP_MIGRATIONS": "tests.onlineapp.unsafe_migrations"}
RETRY = {"ONLINEAPP_MIGRATIONS": "tests.onlineapp.retry_migrations"}
LOCK_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def online(djscale_cluster_factory: Any) -> Iterator[LocalCluster]:
    """The cluster at release N with 10,000 items per shard (the app server starts later).

    Stopped after this module's tests (not at the end of the session) to free the machine.
    """
    cluster = scenario.boot(djscale_cluster_factory, name="onlinemig")
    try:
        scenario.load_rows(cluster, 10_000)
        yield cluster
    finally:
        cluster.down(purge=True)


def _columns(cluster: LocalCluster, alias: str) -> set[str]:
    with scenario.connect(cluster, alias) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'onlineapp_item'").fetchall()
    return {r[0] for r in rows}


def _index_state(cluster: LocalCluster, alias: str, name: str) -> bool | None:
    """True: valid; False: left invalid; None: no such index."""
    with scenario.connect(cluster, alias) as conn:
        row = conn.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c "
                           "ON c.oid = i.indexrelid WHERE c.relname = %s", [name]).fetchone()
    return None if row is None else bool(row[0])


@contextmanager
def writer_in_transaction(cluster: LocalCluster, alias: str) -> Iterator[None]:
    """An open transaction that updated one item: it holds a ROW EXCLUSIVE table lock."""
    host, port = cluster.address(f"pg-{alias}")
    pg = cluster.topology.postgres
    with psycopg.connect(host=host, port=port, user=pg.user, dbname=pg.database,
                         connect_timeout=5) as conn:
        conn.execute("UPDATE onlineapp_item SET note = note "
                     "WHERE id = (SELECT min(id) FROM onlineapp_item)")
        try:
            yield
        finally:
            conn.rollback()


def test_the_guard_refuses_seven_unsafe_operations_and_changes_nothing(
        online: LocalCluster) -> None:
    before = {alias: _columns(online, alias) for alias in scenario.SHARDS}

    check = scenario.manage(online, "check", "--database", "shard1", env=UNSAFE)
    found = set(re.findall(r"djscale\.W31\d", check.stdout + check.stderr))
    expected = {"djscale.W310", "djscale.W311", "djscale.W313", "djscale.W314",
                "djscale.W315", "djscale.W316", "djscale.W318"}
    assert found == expected, check.stdout + check.stderr

    refused = scenario.manage(online, "migrate_shards", env=UNSAFE)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    for alias in scenario.SHARDS:
        line = next(x for x in refused.stdout.splitlines() if x.startswith(f"{alias}: "))
        assert f"{alias}: FAILED: refusing to migrate database '{alias}': 7 operation(s) " \
               "would lock busy tables" in line, refused.stdout
        assert _columns(online, alias) == before[alias]  # nothing ran
    assert "run migrate_shards again to continue" in refused.stderr


def test_safe_rewrites_apply_under_load_with_no_failed_request_and_short_lock_waits(
        online: LocalCluster) -> None:
    report = scenario.run(online, rows_per_shard=0, lock_timeout_ms=LOCK_TIMEOUT_MS,
                          before_seconds=1.0)
    print(report.describe())
    assert report.returncode == 0, report.migrate_output
    for alias in scenario.SHARDS:
        assert re.search(rf"{alias}: applied \d+ migrations \(.*onlineapp\.0002_item_total, "
                         r"onlineapp\.0003_item_total_index, onlineapp\.0004_backfill_total\)",
                         report.migrate_output), report.migrate_output
    assert report.during.requests > 0 and report.during.failures == 0, report.during.errors
    assert report.during.by_kind.get("update", 0) > 0  # writes ran during the migration
    assert report.longest_wait_ms < LOCK_TIMEOUT_MS, report.describe()
    assert report.unfilled == {"shard1": 0, "shard2": 0}
    assert report.index_valid == {"shard1": True, "shard2": True}


def test_a_shard_that_cannot_get_its_lock_fails_alone_and_a_rerun_continues(
        online: LocalCluster) -> None:
    # shard2 has a writer in an open transaction: ADD COLUMN cannot get its lock.
    offsets = scenario.log_offsets(online)
    with writer_in_transaction(online, "shard2"):
        sampler = scenario.LockSampler(online).start()
        first = scenario.manage(online, "migrate_shards", "--lock-timeout", "200",
                                "--attempts", "2", env=RETRY)
        sampled = sampler.stop()
    assert first.returncode == 1
    # Both kinds of evidence the load test relies on see this wait, and it ended at
    # lock_timeout: log_lock_waits logged it at 100 ms, pg_locks showed it.
    logged = scenario.logged_lock_waits(online, offsets)
    assert logged["shard2"] and all(100 <= ms < 200 for ms in logged["shard2"]), logged
    assert 0 < sampled["shard2"] < 1000, sampled
    assert re.search(r"shard1: applied \d+ migrations .*onlineapp\.0002_item_flag, "
                     r"onlineapp\.0003_item_flag_index", first.stdout), first.stdout
    assert "shard2: FAILED: gave up after 2 attempt(s), each failing to get a lock " \
           "in time: canceling statement due to lock timeout" in first.stdout, first.stdout
    assert "shard2: attempt 1/2 failed on a lock" in first.stderr, first.stderr
    assert "flag" in _columns(online, "shard1") and "flag" not in _columns(online, "shard2")

    # The column goes in; then CREATE INDEX CONCURRENTLY waits for a writer past
    # lock_timeout and leaves an invalid index behind.
    added = scenario.manage(online, "migrate", "onlineapp", "0002_item_flag",
                            "--database", "shard2", env=RETRY)
    assert added.returncode == 0, added.stderr
    with writer_in_transaction(online, "shard2"):
        stuck = scenario.manage(online, "migrate", "--database", "shard2",
                                "--lock-timeout", "200", "--attempts", "1", env=RETRY)
    assert stuck.returncode == 1 and "gave up after 1 attempt(s)" in stuck.stderr
    assert _index_state(online, "shard2", "item_note_idx") is False

    rerun = scenario.manage(online, "migrate_shards", env=RETRY)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "shard1: up to date (no migrations to apply)" in rerun.stdout
    assert "shard2: applied 1 migrations (onlineapp.0003_item_flag_index)" in rerun.stdout
    assert _index_state(online, "shard2", "item_note_idx") is True
