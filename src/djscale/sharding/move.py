"""Online move of one logical shard to another database while the app keeps serving.

Steps (the ``move_shard`` command prints each one):

1. **prepare** - attach the fence trigger ``djscale_move_guard`` to every sharded table
   on both databases, clear leftovers of an earlier failed attempt on the target, and
   mark the shard ``moving`` in the map (scatter-gather then restricts each database to
   the shards it owns, so rows in transit are not counted twice).
2. **log** - on the source, mark the shard ``copying``: from now on the trigger writes
   the id of every row of that shard written on the source to ``djscale_shard_changelog``.
   Taking SHARE locks in the same transaction waits out writes already in flight, so no
   write can slip between the copy's snapshot and the log.
3. **copy** - stream the shard's rows with ``COPY`` from one repeatable-read snapshot.
4. **catch up** - re-sync each logged row (its current source version, or its absence)
   to the target, pass after pass, until little is left.
5. **freeze** - mark the shard ``frozen`` while holding an advisory lock: writes to *this*
   logical shard wait in the trigger (other shards are not affected); in-flight ones are
   drained by SHARE locks again. Then the last catch-up pass.
6. **verify** - row counts and checksums (md5 over the rows in id order) of every table
   must match on both sides, or the move stops with the map unchanged.
7. **flip** - point the map at the target, mark the source ``moved`` and release the
   lock: the waiting writes fail with SQLSTATE ``DJ001`` and :class:`ShardedModel.save`
   retries them on the target with a fresh map. Stale processes are refused the same way.
8. **drain** - wait until every process has re-read the map (``grace`` >= the map TTL),
   delete the shard's rows from the source, mark the shard ``active``.

Reads keep working throughout (from the source until the flip, from the target after).
This module uses its own connections (not the caller's), so its locks and transactions
never mix with the application's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import connections
from psycopg import Connection, sql

from djscale.errors import ShardMoveError
from djscale.sharding import shardmap
from djscale.sharding.config import get_config
from djscale.sharding.router import is_sharded

__all__ = ["MoveReport", "ShardMove", "TableCheck", "recover", "sharded_tables"]

ADVISORY_KEY = 7355608
"""First key of the advisory lock ``(ADVISORY_KEY, logical_shard)`` held while frozen."""

_IN_SHARD = "((id >> 10) & 8191) = %s"


@contextmanager
def _connect(alias: str) -> Iterator[Connection[Any]]:
    """A private autocommit connection to ``alias`` (not the thread's Django connection)."""
    wrapper = connections.create_connection(alias)
    try:
        wrapper.ensure_connection()
        conn: Connection[Any] = wrapper.connection
        conn.autocommit = True
        conn.execute("SET TimeZone = 'UTC'")
        yield conn
    finally:
        wrapper.close()


def _delete_rows(conn: Connection[Any], tables: list[str], logical: int) -> int:
    """Delete one logical shard's rows from ``tables`` (children first), past the fence."""
    deleted = 0
    with conn.transaction():
        conn.execute("SET LOCAL djscale.move_bypass = 'on'")
        for table in reversed(tables):
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE " + _IN_SHARD).format(
                sql.Identifier(table)), [logical])
            deleted += cur.rowcount
    return deleted


def sharded_tables() -> list[str]:
    """Tables of all installed sharded models (parents before children)."""
    models = [m for m in apps.get_models() if is_sharded(m) and m._meta.managed
              and not m._meta.proxy]
    tables: list[str] = []
    for model in models:
        for field_ in model._meta.concrete_fields:
            target = getattr(field_, "related_model", None)
            if isinstance(target, type) and is_sharded(target) and target in models:
                table = target._meta.db_table
                if table not in tables:
                    tables.append(table)
        if model._meta.db_table not in tables:
            tables.append(model._meta.db_table)
    return tables


@dataclass
class TableCheck:
    """Rows and checksum of one table's part of the logical shard on each side."""

    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def ok(self) -> bool:
        """True when both sides hold the same rows."""
        return (self.source_rows, self.source_checksum) == (self.target_rows,
                                                            self.target_checksum)


@dataclass
class MoveReport:
    """What a move did."""

    logical: int
    source: str
    target: str
    copied: int = 0
    caught_up: int = 0
    passes: int = 0
    freeze_ms: float = 0.0
    deleted: int = 0
    checks: list[TableCheck] = field(default_factory=list)


class ShardMove:
    """Move logical shard ``logical`` to database ``target``; see the module docstring.

    ``on_frozen``, when given, is called once the shard is frozen and before the last
    catch-up pass: writes to the shard are waiting in the fence trigger then, and will be
    refused after the flip. It is the one place where the freeze window can be observed
    without timing (tests put a write into the window there); the writes pause while it
    runs, so it must return promptly.
    """

    def __init__(self, logical: int, target: str, *, grace_seconds: float | None = None,
                 max_passes: int = 20, settle_rows: int = 20,
                 log: Callable[[str], None] | None = None,
                 on_frozen: Callable[[], None] | None = None) -> None:
        cfg = get_config()
        if not 0 <= logical < cfg.logical_shards:
            raise ShardMoveError(
                f"logical shard {logical} does not exist: expected 0..{cfg.logical_shards - 1}")
        if target not in cfg.aliases:
            raise ShardMoveError(
                f"{target!r} is not a shard database: expected one of {', '.join(cfg.aliases)}")
        self.logical = logical
        self.target = target
        self.grace_seconds = (2 * cfg.map_ttl_seconds + 0.2 if grace_seconds is None
                              else grace_seconds)
        self.max_passes = max_passes
        self.settle_rows = settle_rows
        self.log = log or (lambda message: None)
        self.on_frozen = on_frozen
        self.tables = sharded_tables()
        if not self.tables:
            raise ShardMoveError("no sharded models are installed: there is nothing to move")

    # ------------------------------------------------------------------ the move

    def run(self) -> MoveReport:
        """Do the whole move; raise ShardMoveError (map unchanged) when it cannot."""
        shardmap.invalidate()
        snap = shardmap.current()
        source = snap.alias_for(self.logical)
        state = snap.states[self.logical]
        if source == self.target:
            raise ShardMoveError(f"logical shard {self.logical} is already on {self.target}")
        if state != "active":
            raise ShardMoveError(
                f"logical shard {self.logical} is {state} (another move is running or "
                "crashed); wait for it, or set its djscale_shard_map row back to 'active' "
                "once no move runs"
            )
        report = MoveReport(self.logical, source, self.target)
        with _connect(source) as src, _connect(self.target) as dst:
            flipped = False
            try:
                self._prepare(src, dst, source)
                self._start_log(src)
                report.copied = self._copy(src, dst)
                self.log(f"copied {report.copied} rows of logical shard {self.logical} "
                         f"from {source} to {self.target}")
                for _ in range(self.max_passes):
                    synced = self._catch_up(src, dst)
                    report.caught_up += synced
                    report.passes += 1
                    if synced <= self.settle_rows:
                        break
                self.log(f"caught up {report.caught_up} changed rows in {report.passes} passes")
                frozen_at = time.monotonic()
                self._freeze(src)
                if self.on_frozen is not None:
                    self.on_frozen()
                report.caught_up += self._catch_up(src, dst, until_empty=True)
                report.checks = self._verify(src, dst)
                bad = [c for c in report.checks if not c.ok]
                if bad:
                    raise ShardMoveError(
                        f"verification failed for {bad[0].table}: source has "
                        f"{bad[0].source_rows} rows ({bad[0].source_checksum}), target "
                        f"{bad[0].target_rows} ({bad[0].target_checksum}); map unchanged"
                    )
                shardmap.flip(self.logical, source=source, target=self.target)
                flipped = True
                src.execute("UPDATE djscale_shard_moves SET state = 'moved' WHERE logical = %s",
                            [self.logical])
                src.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_KEY, self.logical])
                report.freeze_ms = (time.monotonic() - frozen_at) * 1000
                self.log(f"verified {len(report.checks)} tables; flipped logical shard "
                         f"{self.logical} to {self.target} (writes paused "
                         f"{report.freeze_ms:.0f} ms)")
            except BaseException:
                if not flipped:
                    self._abort(src, dst, source)
                raise
            time.sleep(self.grace_seconds)
            report.deleted = self._drain(src)
            shardmap.set_state(self.logical, "active", expect_alias=self.target)
            self.log(f"deleted {report.deleted} rows from {source}; logical shard "
                     f"{self.logical} is active on {self.target}")
        return report

    def _prepare(self, src: Connection[Any], dst: Connection[Any], source: str) -> None:
        for conn in (src, dst):
            for table in self.tables:
                conn.execute(sql.SQL(
                    "CREATE OR REPLACE TRIGGER djscale_move_guard BEFORE INSERT OR UPDATE OR "
                    "DELETE ON {} FOR EACH ROW EXECUTE FUNCTION djscale_move_guard()"
                ).format(sql.Identifier(table)))
        with dst.transaction():
            dst.execute("SET LOCAL djscale.move_bypass = 'on'")
            dst.execute("DELETE FROM djscale_shard_moves WHERE logical = %s", [self.logical])
            for table in reversed(self.tables):
                cur = dst.execute(sql.SQL("DELETE FROM {} WHERE " + _IN_SHARD).format(
                    sql.Identifier(table)), [self.logical])
                if cur.rowcount:
                    self.log(f"removed {cur.rowcount} rows left in {table} on {self.target} "
                             "by an earlier attempt")
        shardmap.set_state(self.logical, "moving", expect_alias=source)

    def _lock_tables(self, conn: Connection[Any]) -> None:
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in self.tables)))

    def _start_log(self, src: Connection[Any]) -> None:
        with src.transaction():
            src.execute(
                "INSERT INTO djscale_shard_moves (logical, state, target) "
                "VALUES (%s, 'copying', %s) ON CONFLICT (logical) DO UPDATE "
                "SET state = 'copying', target = EXCLUDED.target", [self.logical, self.target])
            src.execute("DELETE FROM djscale_shard_changelog WHERE logical = %s",
                        [self.logical])
            self._lock_tables(src)

    def _columns(self, conn: Connection[Any], table: str) -> sql.Composable:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", [table]).fetchall()
        return sql.SQL(", ").join(sql.Identifier(r[0]) for r in rows)

    def _stream(self, src: Connection[Any], dst: Connection[Any], table: str,
                where: str, params: list[Any], into: str) -> None:
        cols = self._columns(src, table)
        out_sql = sql.SQL("COPY (SELECT {} FROM {} WHERE " + where + ") TO STDOUT").format(
            cols, sql.Identifier(table))
        in_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(into), cols)
        with src.cursor() as out_cur, dst.cursor() as in_cur, \
                out_cur.copy(out_sql, params) as out, in_cur.copy(in_sql) as inp:
            for chunk in out:
                inp.write(chunk)

    def _copy(self, src: Connection[Any], dst: Connection[Any]) -> int:
        with src.transaction(), dst.transaction():
            src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            dst.execute("SET LOCAL djscale.move_bypass = 'on'")
            for table in self.tables:
                self._stream(src, dst, table, _IN_SHARD, [self.logical], table)
            total = 0
            for table in self.tables:
                row = dst.execute(sql.SQL("SELECT count(*) FROM {} WHERE " + _IN_SHARD).format(
                    sql.Identifier(table)), [self.logical]).fetchone()
                total += int(row[0]) if row else 0
        return total

    def _catch_up(self, src: Connection[Any], dst: Connection[Any], *,
                  until_empty: bool = False, batch: int = 5000) -> int:
        total = 0
        while True:
            with src.transaction(), dst.transaction():
                taken = src.execute(
                    "DELETE FROM djscale_shard_changelog WHERE seq IN (SELECT seq FROM "
                    "djscale_shard_changelog WHERE logical = %s ORDER BY seq LIMIT %s) "
                    "RETURNING tbl, row_id", [self.logical, batch]).fetchall()
                if not taken:
                    return total
                ids: dict[str, set[int]] = defaultdict(set)
                for table, row_id in taken:
                    ids[table].add(int(row_id))
                dst.execute("SET LOCAL djscale.move_bypass = 'on'")
                for table in self.tables:
                    if table not in ids:
                        continue
                    changed = sorted(ids[table])
                    temp = f"djscale_sync_{table}"[:63]
                    dst.execute(sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS"
                    ).format(sql.Identifier(temp), sql.Identifier(table)))
                    self._stream(src, dst, table, "id = ANY(%s)", [changed], temp)
                    cols = self._columns(dst, table)
                    dst.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(
                        sql.Identifier(table)), [changed])
                    dst.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                        sql.Identifier(table), cols, cols, sql.Identifier(temp)))
                total += len(taken)
            if not until_empty and len(taken) < batch:
                return total

    def _freeze(self, src: Connection[Any]) -> None:
        src.execute("SELECT pg_advisory_lock(%s, %s)", [ADVISORY_KEY, self.logical])
        with src.transaction():
            src.execute("UPDATE djscale_shard_moves SET state = 'frozen' WHERE logical = %s",
                        [self.logical])
            self._lock_tables(src)

    def _checksum(self, conn: Connection[Any], table: str) -> tuple[int, str]:
        cols = self._columns(conn, table)
        row = conn.execute(sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.id)), '') "
            "FROM (SELECT {} FROM {} WHERE " + _IN_SHARD + ") t"
        ).format(cols, sql.Identifier(table)), [self.logical]).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, "")

    def _verify(self, src: Connection[Any], dst: Connection[Any]) -> list[TableCheck]:
        checks = []
        for table in self.tables:
            s_rows, s_sum = self._checksum(src, table)
            d_rows, d_sum = self._checksum(dst, table)
            checks.append(TableCheck(table, s_rows, d_rows, s_sum, d_sum))
        return checks

    def _abort(self, src: Connection[Any], dst: Connection[Any], source: str) -> None:
        """Undo a move that did not flip: writes go on against the source, the partial
        copy on the target is deleted."""
        try:
            for conn in (src, dst):
                if conn.info.transaction_status != 0:  # not idle: roll the broken tx back
                    conn.rollback()
            src.execute("DELETE FROM djscale_shard_moves WHERE logical = %s", [self.logical])
            src.execute("DELETE FROM djscale_shard_changelog WHERE logical = %s",
                        [self.logical])
            src.execute("SELECT pg_advisory_unlock_all()")
            _delete_rows(dst, self.tables, self.logical)
        finally:
            shardmap.set_state(self.logical, "active", expect_alias=source)

    def _drain(self, src: Connection[Any]) -> int:
        return _delete_rows(src, self.tables, self.logical)


def recover(logical: int, *, log: Callable[[str], None] | None = None) -> str:
    """Clean up after a move of ``logical`` that was killed; return where the shard is.

    Only run it when no move of that shard is running. Whatever step the move died in,
    the shard map says which database holds the shard (the source before the flip, the
    target after it): the shard's rows are deleted from every *other* shard database,
    which is also fenced against stale writers; the change log is emptied and the shard
    is marked ``active`` again.
    """
    say = log or (lambda message: None)
    cfg = get_config()
    if not 0 <= logical < cfg.logical_shards:
        raise ShardMoveError(
            f"logical shard {logical} does not exist: expected 0..{cfg.logical_shards - 1}")
    shardmap.invalidate()
    snap = shardmap.current()
    home = snap.alias_for(logical)
    tables = sharded_tables()
    for alias in cfg.aliases:
        with _connect(alias) as conn:
            if alias == home:
                conn.execute("DELETE FROM djscale_shard_moves WHERE logical = %s", [logical])
            else:
                conn.execute(
                    "INSERT INTO djscale_shard_moves (logical, state, target) "
                    "VALUES (%s, 'moved', %s) ON CONFLICT (logical) DO UPDATE "
                    "SET state = 'moved', target = EXCLUDED.target", [logical, home])
                deleted = _delete_rows(conn, tables, logical)
                if deleted:
                    say(f"deleted {deleted} stray rows of logical shard {logical} from {alias}")
            conn.execute("DELETE FROM djscale_shard_changelog WHERE logical = %s", [logical])
    if snap.states[logical] != "active":
        shardmap.set_state(logical, "active", expect_alias=home)
    say(f"logical shard {logical} is active on {home}")
    return home
