"""Migrate ``tests.onlineapp`` on two shards while its app server serves reads and writes.

The scenario behind ``tests/integration/test_migrations_online.py`` (small) and the
1,000,000-row run of docs/migrations.md (``python -m tests.onlineapp.scenario
--rows-per-shard 500000``):

1. boot PostgreSQL (main + 2 shards), migrate ``onlineapp`` to 0001 (release N), load
   ``rows_per_shard`` items on each shard, turn on ``log_lock_waits`` (logged after
   ``deadlock_timeout`` = 100 ms), start a gunicorn app server;
2. put it under load (threads: GET an item, POST a new item, POST an update);
3. ``migrate_shards --lock-timeout MS``: a nullable column, an index CONCURRENTLY, a
   batched backfill of the column over every row;
4. report: requests and failures during the migration, the longest lock wait seen in
   ``pg_locks`` (sampled every 20 ms) and in the server logs, the rows left unfilled.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from djscale.cluster import LocalCluster
from djscale.testing import ClusterFactory

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ("shard1", "shard2")


def topology(name: str = "online") -> dict[str, Any]:
    """The cluster: main database + 2 shards, one app server with 2 workers."""
    return {"project": {"name": name, "pythonpath": str(ROOT),
                        "settings": "tests.onlineapp.settings",
                        "wsgi": "tests.wsgi:application"},
            "postgres": {"database": "online"},
            "shards": [{"name": s} for s in SHARDS],
            "redis": {"port": 9},
            "app": {"servers": 1, "workers": 2, "threads": 2}}


def connect(cluster: LocalCluster, alias: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the database ``alias`` of ``cluster``."""
    host, port = cluster.address(f"pg-{alias}")
    pg = cluster.topology.postgres
    return psycopg.connect(host=host, port=port, user=pg.user, dbname=pg.database,
                           autocommit=True, connect_timeout=5)


def manage(cluster: LocalCluster, *args: str, env: dict[str, str] | None = None,
           timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """``python -m django ARGS`` with the cluster's settings; output captured."""
    full = {**os.environ, **cluster.env("manage"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def boot(factory: ClusterFactory, name: str = "online") -> LocalCluster:
    """PostgreSQL up, main database migrated, ``onlineapp`` at 0001 on both shards."""
    cluster = factory(topology(name), parts=("postgres",), name=name)
    steps: list[tuple[str, ...]] = [("migrate", "--database", "default", "-v", "0")]
    for alias in SHARDS:  # release N: everything, and onlineapp up to 0001
        steps += [("migrate", "auth", "--database", alias, "-v", "0"),
                  ("migrate", "onlineapp", "0001", "--database", alias, "-v", "0")]
    for step in steps:
        done = manage(cluster, *step)
        if done.returncode:
            raise RuntimeError(f"{' '.join(step)} failed: {done.stderr[-2000:]}")
    for alias in SHARDS:
        with connect(cluster, alias) as conn:
            conn.execute(f"ALTER DATABASE {cluster.topology.postgres.database} "
                         "SET log_lock_waits = on")
            conn.execute(f"ALTER DATABASE {cluster.topology.postgres.database} "
                         "SET deadlock_timeout = '100ms'")
    return cluster


def load_rows(cluster: LocalCluster, rows_per_shard: int) -> None:
    """Insert ``rows_per_shard`` items on each shard, ids made by ``djscale_next_id``."""
    done = manage(cluster, "shell", "-c", (
        "from djscale.sharding import shardmap;"
        "import json;snap = shardmap.current();"
        f"print(json.dumps({{a: sorted(snap.owned_by(a)) for a in {list(SHARDS)!r}}}))"))
    if done.returncode:
        raise RuntimeError(f"reading the shard map failed: {done.stderr[-2000:]}")
    owned = json.loads(done.stdout.strip().splitlines()[-1])
    epoch = manage(cluster, "shell", "-c",
                   "from djscale import conf; print(conf.get().sharding.epoch_ms)")
    epoch_ms = int(epoch.stdout.strip().splitlines()[-1])
    for alias in SHARDS:
        with connect(cluster, alias) as conn:
            conn.execute(
                "INSERT INTO onlineapp_item (id, user_id, amount, note) "
                "SELECT djscale_next_id((%(owned)s::int[])[1 + g %% %(n)s], %(epoch)s), "
                "g, g %% 1000, 'seed' FROM generate_series(1, %(rows)s) g",
                {"owned": owned[alias], "n": len(owned[alias]), "epoch": epoch_ms,
                 "rows": rows_per_shard})
            conn.execute("ANALYZE onlineapp_item")


def sample_ids(cluster: LocalCluster, per_shard: int = 2000) -> list[int]:
    """Ids of existing items to read and update."""
    ids: list[int] = []
    for alias in SHARDS:
        with connect(cluster, alias) as conn:
            rows = conn.execute("SELECT id FROM onlineapp_item TABLESAMPLE SYSTEM (10) "
                                "LIMIT %s", [per_shard]).fetchall()
            if len(rows) < per_shard // 4:
                rows = conn.execute("SELECT id FROM onlineapp_item LIMIT %s",
                                    [per_shard]).fetchall()
            ids.extend(r[0] for r in rows)
    return ids


# ------------------------------------------------------------------ load


@dataclass
class LoadStats:
    """What the load generator saw."""

    requests: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)

    def p(self, q: float) -> float:
        """The ``q`` quantile of request latency, milliseconds."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def describe(self) -> str:
        """One line."""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        return (f"{self.requests} requests ({kinds}), {self.failures} failed, "
                f"p50 {self.p(0.5):.1f} ms, p95 {self.p(0.95):.1f} ms, "
                f"max {self.p(1.0):.1f} ms")


class Load:
    """Threads sending reads and writes to the app server until stopped."""

    def __init__(self, cluster: LocalCluster, ids: list[int], threads: int = 4) -> None:
        self.address = cluster.address("app-1")
        self.ids = ids
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"online-load-{i}") for i in range(threads)]

    def start(self) -> Load:
        """Begin sending."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadStats:
        """Stop sending and return the counts."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.stats

    def snapshot(self) -> LoadStats:
        """A copy of the counts so far."""
        with self._lock:
            return LoadStats(self.stats.requests, self.stats.failures, list(self.stats.errors),
                             list(self.stats.latencies), dict(self.stats.by_kind))

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection(*self.address, timeout=30)
        while not self._stop.is_set():
            roll = rnd.random()
            if roll < 0.6:
                kind, method, path = "read", "GET", f"/items/{rnd.choice(self.ids)}/"
            elif roll < 0.8:
                kind, method = "create", "POST"
                path = f"/users/{rnd.randrange(1, 10**9)}/items/"
            else:
                kind, method, path = "update", "POST", f"/items/{rnd.choice(self.ids)}/bump/"
            started = time.monotonic()
            error = ""
            try:
                conn.request(method, path, headers={"Host": "localhost"})
                response = conn.getresponse()
                body = response.read()
                if response.status >= 400:
                    error = f"{method} {path}: {response.status} {body[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"{method} {path}: {type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection(*self.address, timeout=30)
            elapsed = time.monotonic() - started
            with self._lock:
                self.stats.requests += 1
                self.stats.latencies.append(elapsed)
                self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
                if error:
                    self.stats.failures += 1
                    if len(self.stats.errors) < 20:
                        self.stats.errors.append(error)
        conn.close()


# ------------------------------------------------------------------ lock waits


class LockSampler:
    """Polls ``pg_locks`` of each shard: the longest wait of any session for any lock."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.02) -> None:
        self.cluster = cluster
        self.interval = interval
        self.longest: dict[str, float] = dict.fromkeys(SHARDS, 0.0)
        self.longest_query: dict[str, str] = dict.fromkeys(SHARDS, "")
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a,), daemon=True,
                                          name=f"lock-sampler-{a}") for a in SHARDS]

    def start(self) -> LockSampler:
        """Begin sampling."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop; the longest wait seen per shard, milliseconds."""
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self.longest

    def _run(self, alias: str) -> None:
        with connect(self.cluster, alias) as conn:
            while not self._stop.wait(self.interval):
                row = conn.execute(
                    "SELECT extract(epoch FROM clock_timestamp() - l.waitstart) * 1000, "
                    "a.query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND l.waitstart IS NOT NULL "
                    "ORDER BY l.waitstart LIMIT 1").fetchone()
                if row and float(row[0]) > self.longest[alias]:
                    self.longest[alias] = float(row[0])
                    self.longest_query[alias] = " ".join(str(row[1]).split())[:160]


_WAITED = re.compile(r"(?:acquired|still waiting for) .*? after ([0-9.]+) ms")


def logged_lock_waits(cluster: LocalCluster, offsets: dict[str, int]) -> dict[str, list[float]]:
    """Lock waits (ms) the shards logged (``log_lock_waits``) since ``offsets``."""
    found: dict[str, list[float]] = {}
    for alias in SHARDS:
        text = _log_path(cluster, alias).read_text(errors="replace")[offsets[alias]:]
        found[alias] = [float(m.group(1)) for m in _WAITED.finditer(text)]
    return found


def log_offsets(cluster: LocalCluster) -> dict[str, int]:
    """The current size of each shard's server log (to read only what follows)."""
    return {a: len(_log_path(cluster, a).read_text(errors="replace")) for a in SHARDS}


def _log_path(cluster: LocalCluster, alias: str) -> Path:
    for proc in cluster.processes():
        if proc.name == f"pg-{alias}":
            return Path(proc.log)
    raise LookupError(f"no pg-{alias} in the cluster")


# ------------------------------------------------------------------ the run


@dataclass
class Report:
    """What one migration under load did."""

    rows: int
    lock_timeout_ms: int
    migrate_seconds: float
    migrate_output: str
    during: LoadStats
    before: LoadStats
    sampled_wait_ms: dict[str, float]
    sampled_query: dict[str, str]
    logged_wait_ms: dict[str, list[float]]
    unfilled: dict[str, int]
    index_valid: dict[str, bool]
    returncode: int

    @property
    def longest_wait_ms(self) -> float:
        """The longest lock wait seen, sampled or logged, on any shard."""
        waits = [*self.sampled_wait_ms.values(),
                 *(w for ws in self.logged_wait_ms.values() for w in ws)]
        return max(waits, default=0.0)

    def describe(self) -> str:
        """The lines docs/migrations.md shows."""
        logged = {a: (len(w), max(w, default=0.0)) for a, w in self.logged_wait_ms.items()}
        lines = [
            f"rows: {self.rows:,} over {len(SHARDS)} shards; lock_timeout {self.lock_timeout_ms}"
            " ms; log_lock_waits on (deadlock_timeout 100 ms)",
            f"migrate_shards: exit {self.returncode} in {self.migrate_seconds:.1f} s",
            *("  " + line for line in self.migrate_output.strip().splitlines()),
            f"load before the migration ({self.before_seconds:.0f} s): "
            f"{self.before.describe()}",
            f"load during the migration: {self.during.describe()}",
            "longest lock wait sampled in pg_locks: " + ", ".join(
                f"{a} {ms:.0f} ms" for a, ms in self.sampled_wait_ms.items()),
            "lock waits logged (> 100 ms): " + ", ".join(
                f"{a} {n} (longest {ms:.0f} ms)" for a, (n, ms) in logged.items()),
            f"longest lock wait overall: {self.longest_wait_ms:.0f} ms "
            f"(lock_timeout {self.lock_timeout_ms} ms)",
            "rows left without total: " + ", ".join(
                f"{a} {n}" for a, n in self.unfilled.items()),
            "index item_user_amount_idx valid: " + ", ".join(
                f"{a} {v}" for a, v in self.index_valid.items()),
        ]
        return "\n".join(lines)

    before_seconds: float = 0.0


@contextmanager
def under_load(cluster: LocalCluster, threads: int = 4) -> Iterator[Load]:
    """The app server up and loaded for the block."""
    load = Load(cluster, sample_ids(cluster), threads=threads).start()
    try:
        yield load
    finally:
        load.stop()


def run(cluster: LocalCluster, *, rows_per_shard: int, lock_timeout_ms: int = 1000,
        before_seconds: float = 3.0, threads: int = 4) -> Report:
    """Load, serve, migrate under load, and report (the cluster from :func:`boot`)."""
    load_rows(cluster, rows_per_shard)
    cluster.up(only=("app",))
    offsets = log_offsets(cluster)
    with under_load(cluster, threads) as load:
        time.sleep(before_seconds)  # the same load without a migration, for comparison
        before = load.snapshot()
        sampler = LockSampler(cluster).start()
        started = time.monotonic()
        done = manage(cluster, "migrate_shards", "--lock-timeout", str(lock_timeout_ms))
        seconds = time.monotonic() - started
        sampled = sampler.stop()
        total = load.snapshot()
    during = LoadStats(total.requests - before.requests, total.failures - before.failures,
                       total.errors[len(before.errors):], total.latencies[len(before.latencies):],
                       {k: v - before.by_kind.get(k, 0) for k, v in total.by_kind.items()})
    unfilled: dict[str, int] = {}
    valid: dict[str, bool] = {}
    for alias in SHARDS:
        with connect(cluster, alias) as conn:
            high = conn.execute("SELECT high_pk FROM djscale_backfill WHERE name = %s",
                                ["onlineapp.item:total"]).fetchone()
            limit = high[0] if high else 0
            (unfilled[alias],) = conn.execute(
                "SELECT count(*) FROM onlineapp_item WHERE total IS NULL AND id <= %s",
                [limit]).fetchone() or (0,)
            row = conn.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'item_user_amount_idx'").fetchone()
            valid[alias] = bool(row and row[0])
    return Report(rows=rows_per_shard * len(SHARDS), lock_timeout_ms=lock_timeout_ms,
                  migrate_seconds=seconds, migrate_output=done.stdout + done.stderr,
                  during=during, before=before, sampled_wait_ms=sampled,
                  sampled_query=dict(sampler.longest_query),
                  logged_wait_ms=logged_lock_waits(cluster, offsets), unfilled=unfilled,
                  index_valid=valid, returncode=done.returncode,
                  before_seconds=before_seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.onlineapp.scenario``: the run of docs/migrations.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-shard", type=int, default=500_000)
    parser.add_argument("--lock-timeout", type=int, default=1000, metavar="MS")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    factory = ClusterFactory()
    try:
        cluster = boot(factory)
        report = run(cluster, rows_per_shard=args.rows_per_shard,
                     lock_timeout_ms=args.lock_timeout, threads=args.threads,
                     before_seconds=10.0)
        print(report.describe())
        if report.during.errors:
            print("first failures:", *report.during.errors[:5], sep="\n  ")
        ok = (report.returncode == 0 and report.during.failures == 0
              and report.longest_wait_ms <= args.lock_timeout
              and not any(report.unfilled.values()) and all(report.index_valid.values()))
        print("RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        factory.close()


if __name__ == "__main__":
    sys.exit(main())
