"""Migrating two live shards: request latency and throughput while it runs vs before.

The scenario of ``tests.onlineapp.scenario`` (docs/migrations.md): items on two shards
served by a gunicorn app server under a mixed read/insert/update load; the same load is
measured alone, then while ``migrate_shards`` adds a column, builds an index CONCURRENTLY
and backfills the column over every row (500,000 rows per shard; 10,000 with --quick).
The ratios say what the migration costs the traffic; the notes carry the must-haves:
failed requests (0) and the longest lock wait against ``lock_timeout``.
"""

from __future__ import annotations

from tests.onlineapp import scenario

from benchmarks.common import Context, Result

TOPIC = "migrations"
LOCK_TIMEOUT_MS = 1000


def run(ctx: Context) -> list[Result]:
    """One migration under load; two ratios."""
    cluster = scenario.boot(ctx.factory, name="benchmig")
    rows = 10_000 if ctx.quick else 500_000
    before_seconds = 3.0 if ctx.quick else 10.0
    report = scenario.run(cluster, rows_per_shard=rows, lock_timeout_ms=LOCK_TIMEOUT_MS,
                          before_seconds=before_seconds)
    if report.returncode:
        raise RuntimeError(f"migrate_shards failed: {report.migrate_output[-2000:]}")
    ok = (report.during.failures == 0 and report.longest_wait_ms < LOCK_TIMEOUT_MS
          and not any(report.unfilled.values()) and all(report.index_valid.values()))
    facts = (f"{report.rows:,} rows on 2 shards; migrate_shards took "
             f"{report.migrate_seconds:.0f} s; {report.during.requests:,} requests during it, "
             f"{report.during.failures} failed; longest lock wait "
             f"{report.longest_wait_ms:.0f} ms (lock_timeout {LOCK_TIMEOUT_MS} ms, "
             "log_lock_waits + pg_locks sampling)")
    during_rate = report.during.requests / report.migrate_seconds
    before_rate = report.before.requests / before_seconds
    return [
        Result(TOPIC, "request p95 while migrating (column, index CONCURRENTLY, backfill)",
               value=report.during.p(0.95), baseline=report.before.p(0.95), unit="ms",
               baseline_name="same load, no migration", higher_is_better=False,
               target="0 failed, waits < lock_timeout", met=ok, notes=facts),
        Result(TOPIC, "requests/s while migrating vs before",
               value=during_rate, baseline=before_rate, unit="req/s",
               baseline_name="same load, no migration", target=">= 0.5x",
               met=during_rate / before_rate >= 0.5,
               notes="2 cores run both shards' index build and backfill, the load "
                     "generator and the app server"),
    ]
