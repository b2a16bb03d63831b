"""What the event path (outbox -> relay -> broker -> worker -> inbox) holds, for chaos runs.

The chaos scenarios that break the event path (stop the broker, kill a worker mid-task)
need to see inside it without changing it:

- the outbox rows of a topic written since the run started, how many are still pending;
- which of them a consumer has processed (its ``djscale_inbox`` rows) and, given a
  query of the effect rows' event ids, how many effect rows they produced (a duplicate
  effect means the inbox failed);
- the consumers that are *mid-task*: transactions holding an uncommitted inbox insert
  (``djscale.events`` inserts the inbox row first, then runs the handler, then commits);
- the messages the Redis broker handed to a worker that has not acknowledged them yet
  (kombu's ``unacked`` hash): with ``acks_late`` these come back to the queue after the
  broker's visibility timeout when their worker dies;
- how many redeliveries the workers skipped as duplicates (``djscale.events`` logs each);
- how often the relay sent an event again because its delivery was not confirmed (the
  outbox rows' ``redeliveries``), and how many deliveries are confirmed.

Read-only: SQL ``SELECT``s on the primary, Redis ``HVALS``, log files. Nothing here starts
or stops a process.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from djscale.cluster import LocalCluster
from djscale.cluster import postgres as pg
from djscale.errors import ClusterError

__all__ = ["EventLedger", "EventTally", "broker_backlog", "broker_url", "consumers_mid_task",
           "db_now", "inbox_rows", "queued_task_ids", "restore_lock_ttl", "unacked_task_ids"]

DUPLICATE_LOG = b"duplicate skipped"
"""What ``djscale.events.consumers`` logs when the inbox skips a redelivered event."""


def _query(cluster: LocalCluster, sql: str, params: tuple[object, ...] = (),
           timeout: float = 30.0) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on the default primary, waiting for it while it (re)starts."""
    topo = cluster.topology.postgres
    host, port = cluster.address("pg-default")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with pg.connect(host, port, topo.user, topo.database) as conn:
                return list(conn.execute(sql.encode(), params).fetchall())
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def db_now(cluster: LocalCluster) -> dt.datetime:
    """The primary's clock (outbox rows are stamped on the same machine)."""
    rows = _query(cluster, "SELECT now()")
    value = rows[0][0]
    assert isinstance(value, dt.datetime)
    return value


def consumers_mid_task(cluster: LocalCluster) -> int:
    """How many transactions hold an uncommitted inbox insert: consumers mid-task."""
    rows = _query(cluster, """
        SELECT count(DISTINCT l.pid) FROM pg_locks l
        WHERE l.relation = to_regclass('djscale_inbox') AND l.mode = 'RowExclusiveLock'
          AND l.granted AND l.pid <> pg_backend_pid()""")
    return int(str(rows[0][0]))


def inbox_rows(cluster: LocalCluster, *, consumer: str, event_ids: list[str]) -> int:
    """How many inbox rows ``consumer`` has for the events ``event_ids``."""
    rows = _query(cluster, """
        SELECT count(*) FROM djscale_inbox
        WHERE consumer = %s AND event_id::text = ANY(%s)""", (consumer, event_ids))
    return int(str(rows[0][0]))


def broker_url(cluster: LocalCluster) -> str:
    """The Celery broker URL the cluster's workers use (as Django settings give it)."""
    from djscale.settings import from_topology

    url = str(from_topology(cluster.topology, state_dir=cluster.state_dir)
              .get("CELERY_BROKER_URL") or "")
    if not url.startswith(("redis://", "rediss://")):
        raise ClusterError(f"the event chaos scenarios need a Redis broker; this cluster's "
                           f"broker is {url or 'not configured'!r}")
    return url


def broker_backlog(cluster: LocalCluster) -> int:
    """Messages in the broker not yet acknowledged: queued plus handed to a worker."""
    import redis

    client = redis.Redis.from_url(broker_url(cluster), socket_timeout=5)
    try:
        queued = sum(int(client.llen(q)) for q in cluster.topology.celery.queues)
        return queued + int(client.hlen("unacked"))
    finally:
        client.close()


def restore_lock_ttl(cluster: LocalCluster) -> int:
    """Seconds left on kombu's restore lock (``unacked_mutex``); -2 when nobody holds it.

    A worker killed while it held the lock blocks every restore of unacknowledged messages
    until the lock expires (kombu's ``unacked_mutex_expire``, 300 s by default).
    """
    import redis

    client = redis.Redis.from_url(broker_url(cluster), socket_timeout=5)
    try:
        return int(client.ttl("unacked_mutex"))
    finally:
        client.close()


def queued_task_ids(cluster: LocalCluster) -> list[str]:
    """Ids of the task messages waiting in the broker's queues (Redis broker)."""
    import redis

    client = redis.Redis.from_url(broker_url(cluster), socket_timeout=5)
    try:
        items = [m for q in cluster.topology.celery.queues for m in client.lrange(q, 0, -1)]
    finally:
        client.close()
    return [_task_id(item) for item in items]


def _task_id(message: bytes | str) -> str:
    """The task id of a kombu message as stored in Redis (``[message, ...]`` when unacked)."""
    try:
        raw: Any = json.loads(message)
        if isinstance(raw, list):
            raw = raw[0]
        return str(raw["headers"]["id"])
    except (ValueError, LookupError, TypeError):
        return "?"


def unacked_task_ids(cluster: LocalCluster) -> list[str]:
    """Ids of the task messages a worker received and has not acknowledged (Redis broker)."""
    import redis

    client = redis.Redis.from_url(broker_url(cluster), socket_timeout=5)
    try:
        values = client.hvals("unacked")
    finally:
        client.close()
    return [_task_id(value) for value in values]


@dataclass(frozen=True)
class EventTally:
    """The event path's state for the events published since a point in time."""

    published: int
    pending: int
    consumed: int
    effects: int | None
    distinct_effects: int | None
    duplicates_skipped: int
    redelivered: int = 0
    """Messages the relay sent again for lack of a confirmed delivery."""
    confirmed: int = 0
    """Events whose delivery the relay has confirmed (the task's result)."""


class EventLedger:
    """Counts the events of ``topic`` published from now on and what ``consumer`` did.

    ``effect_sql`` (optional) selects the event id of every effect row the consumer wrote
    (e.g. ``SELECT event_id FROM app_effect``); only the events of this run are counted.
    """

    def __init__(self, cluster: LocalCluster, *, topic: str, consumer: str,
                 effect_sql: str = "") -> None:
        self.cluster = cluster
        self.topic = topic
        self.consumer = consumer
        self.effect_sql = effect_sql
        broker_url(cluster)  # fail before the fault when the broker cannot be inspected
        try:
            self.since = db_now(cluster)
            self._effects()
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"cannot read the event tables or run the effect SQL: "
                               f"{first}") from None
        self._logs0 = {p: p.stat().st_size for p in self._worker_logs()}

    def _worker_logs(self) -> list[Path]:
        return [Path(p.log) for p in self.cluster.processes()
                if p.kind == "celery" and p.log and Path(p.log).exists()]

    def _effects(self) -> tuple[int, int] | None:
        if not self.effect_sql:
            return None
        inner = self.effect_sql.strip().rstrip(";").replace("%", "%%")
        try:
            rows = _query(self.cluster, f"""
                SELECT count(e.event_id), count(DISTINCT e.event_id)
                FROM ({inner}) AS e JOIN djscale_outbox o ON o.id = e.event_id
                WHERE o.topic = %s AND o.created_at >= %s""", (self.topic, self.since))
        except psycopg.errors.UndefinedColumn:
            raise ClusterError("the effect SQL must select a column named event_id (the "
                               "event id of each effect row), e.g. SELECT event_id FROM "
                               "app_effect") from None
        return int(str(rows[0][0])), int(str(rows[0][1]))

    def _duplicates_skipped(self) -> int:
        n = 0
        for path in self._worker_logs():
            with open(path, "rb") as fh:
                fh.seek(self._logs0.get(path, 0))
                n += fh.read().count(DUPLICATE_LOG)
        return n

    def pending(self) -> int:
        """Events of this run still waiting in the outbox for the broker."""
        rows = _query(self.cluster, """
            SELECT count(*) FROM djscale_outbox
            WHERE topic = %s AND created_at >= %s AND published_at IS NULL""",
                      (self.topic, self.since))
        return int(str(rows[0][0]))

    def unconsumed(self) -> list[tuple[str, bool]]:
        """(event id, accepted by the broker) of this run's events without an inbox row."""
        rows = _query(self.cluster, """
            SELECT o.id::text, o.published_at IS NOT NULL FROM djscale_outbox o
            WHERE o.topic = %s AND o.created_at >= %s AND NOT EXISTS (
                SELECT 1 FROM djscale_inbox i WHERE i.event_id = o.id AND i.consumer = %s)
            ORDER BY o.created_at""", (self.topic, self.since, self.consumer))
        return [(str(r[0]), bool(r[1])) for r in rows]

    def tally(self) -> EventTally:
        """Published, pending and consumed events of this run, and their effects."""
        row = _query(self.cluster, """
            SELECT count(*), count(*) FILTER (WHERE o.published_at IS NULL),
                   count(i.id), coalesce(sum(o.redeliveries), 0),
                   count(*) FILTER (WHERE o.confirmed_at IS NOT NULL)
            FROM djscale_outbox o
            LEFT JOIN djscale_inbox i ON i.event_id = o.id AND i.consumer = %s
            WHERE o.topic = %s AND o.created_at >= %s""",
                     (self.consumer, self.topic, self.since))[0]
        effects = self._effects()
        return EventTally(
            published=int(str(row[0])), pending=int(str(row[1])), consumed=int(str(row[2])),
            effects=None if effects is None else effects[0],
            distinct_effects=None if effects is None else effects[1],
            duplicates_skipped=self._duplicates_skipped(),
            redelivered=int(str(row[3])), confirmed=int(str(row[4])))

    def drain(self, *, timeout: float, tick: Callable[[], None] = lambda: None,
              ) -> tuple[EventTally, float, float]:
        """Wait until every event of this run is consumed, then until the broker is idle.

        Return the tally, the seconds until every event was consumed, and the seconds
        until the broker had nothing left (late redeliveries, skipped by the inbox, are
        then counted too). ``tick`` runs before each look (e.g. to restart a crashed worker).
        """
        started = time.monotonic()
        consumed_after = -1.0
        while True:
            tick()
            tally = self.tally()
            elapsed = time.monotonic() - started
            if consumed_after < 0 and tally.pending == 0 and tally.consumed >= tally.published:
                consumed_after = elapsed
            if consumed_after >= 0:
                try:
                    idle = broker_backlog(self.cluster) == 0
                except Exception:  # noqa: BLE001 - an unreadable broker is not "idle"
                    idle = False
                if idle:
                    return self.tally(), consumed_after, elapsed
            if elapsed > timeout:
                return tally, consumed_after if consumed_after >= 0 else elapsed, elapsed
            time.sleep(0.25)
