"""Chaos scenarios: break one component of a running local cluster under load, measure.

Each scenario drives a bounded load through the load balancer, injects one fault
(SIGKILL an app server, SIGKILL a replica, pause replay on the replicas, stop Redis,
restart the primary), heals it, and reports failed requests, the p99 latency during the
fault, the recovery time and, when writes are part of the load, a reconciliation of the
writes acknowledged to the client against the rows in the database (nothing lost, nothing
duplicated). The expectation of each scenario is part of its definition, so the CLI and
the integration tests judge a run the same way.

This module must not change the cluster's configuration: it only stops and starts the
processes the cluster recorded, and runs read-only SQL (plus replay pause/resume).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from djscale.chaos.load import LoadResult, run_load
from djscale.cluster import LocalCluster
from djscale.cluster import postgres as pg
from djscale.errors import ClusterError

__all__ = ["SCENARIOS", "ChaosOptions", "ChaosReport", "run_scenario"]


@dataclass(frozen=True)
class ChaosOptions:
    """What load to drive and how long the fault lasts."""

    read_path: str = "/whoami"
    write_path: str = ""
    count_sql: str = ""
    write_every: int = 4
    requests: int = 20000
    max_seconds: float = 60.0
    concurrency: int = 8
    fault_after: float = 1.5
    fault_seconds: float = 3.0
    tail_seconds: float = 1.5


@dataclass
class ChaosReport:
    """What one scenario run measured, and whether it met the scenario's expectation."""

    scenario: str
    fault: str
    expectation: str
    requests: int = 0
    reads_failed: int = 0
    writes_failed: int = 0
    writes_ok: int = 0
    p99_before_ms: float = 0.0
    p99_fault_ms: float = 0.0
    recovery_seconds: float = 0.0
    rows_added: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    ambiguous: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    passed: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    def text(self) -> str:
        """A human-readable summary."""
        lines = [
            f"scenario   {self.scenario}: {self.fault}",
            f"expected   {self.expectation}",
            f"requests   {self.requests} (by status: "
            f"{', '.join(f'{k}: {v}' for k, v in self.statuses.items())})",
            f"failed     reads {self.reads_failed}, writes {self.writes_failed}",
            f"p99        {self.p99_before_ms:.1f} ms before the fault, "
            f"{self.p99_fault_ms:.1f} ms during it",
            f"recovery   {self.recovery_seconds:.2f} s from restart to healthy",
        ]
        if self.rows_added is not None:
            lines.append(f"writes     {self.writes_ok} acknowledged, {self.rows_added} rows added: "
                         f"lost {self.lost}, duplicated {self.duplicated}, committed but "
                         f"answered with an error {self.ambiguous}")
        lines += [f"note       {n}" for n in self.notes]
        lines.append(f"result     {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Scenario:
    fault: str
    expectation: str
    inject: Callable[[LocalCluster], None]
    heal: Callable[[LocalCluster], None]
    writes: bool
    judge: Callable[[ChaosReport, LoadResult, float, float], bool]


def _replicas(cluster: LocalCluster) -> list[str]:
    return [p.name for p in cluster.processes()
            if p.kind == "postgres" and p.role == "replica" and p.group == "default"]


def _first(cluster: LocalCluster, prefix: str) -> str:
    names = [p.name for p in cluster.processes() if p.name.startswith(prefix)]
    if not names:
        raise ClusterError(f"this cluster has no service named {prefix}*; the scenario needs one")
    return names[0]


def _replay(cluster: LocalCluster, pause: bool) -> None:
    topo = cluster.topology.postgres
    for name in _replicas(cluster):
        host, port = cluster.address(name)
        with pg.connect(host, port, topo.user, topo.database) as conn:
            conn.execute("SELECT pg_wal_replay_pause()" if pause
                         else "SELECT pg_wal_replay_resume()")


def _no_failed_reads(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    return report.reads_failed == 0 and report.requests > 0


def _primary_restart(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    # Writes during the restart fail fast with 503; none is lost or duplicated; reads go on.
    slow = [s for s in load.failed("POST") if s.status != 503 or s.latency > 2.0]
    if slow:
        report.notes.append(f"{len(slow)} failed writes were not a fast 503")
    after = [s for s in load.window(t1, float("inf")) if s.method == "POST"]
    recovered = any(200 <= s.status < 300 for s in after)
    if not recovered:
        report.notes.append("no write succeeded after the primary came back")
    return (report.reads_failed == 0 and not slow and recovered
            and report.lost == 0 and report.duplicated == 0)


def _kill(prefix: str) -> Callable[[LocalCluster], None]:
    return lambda c: c.stop_service(_first(c, prefix), crash=True)


def _start(prefix: str) -> Callable[[LocalCluster], None]:
    return lambda c: c.start_service(_first(c, prefix))


SCENARIOS: dict[str, _Scenario] = {
    "kill-app-server": _Scenario(
        "SIGKILL one app server, restart it", "zero failed idempotent requests",
        _kill("app-"), _start("app-"), False, _no_failed_reads),
    "kill-replica": _Scenario(
        "SIGKILL one replica, restart it", "zero failed idempotent requests",
        lambda c: c.stop_service(_replicas(c)[0], crash=True),
        lambda c: c.start_service(_replicas(c)[0]), False, _no_failed_reads),
    "pause-replication": _Scenario(
        "pause WAL replay on every replica past max_lag, resume it",
        "zero failed requests; reads fall back to the primary while replicas lag",
        lambda c: _replay(c, True), lambda c: _replay(c, False), True, _no_failed_reads),
    "stop-redis": _Scenario(
        "stop Redis, start it again", "zero failed idempotent requests",
        lambda c: c.stop_service("redis"), lambda c: c.start_service("redis"), False,
        _no_failed_reads),
    "restart-primary": _Scenario(
        "stop the primary (fast shutdown), start it again",
        "writes fail fast with 503 during the restart and succeed after it; reads continue; "
        "no acknowledged write lost or duplicated",
        lambda c: c.stop_service("pg-default"), lambda c: c.start_service("pg-default"), True,
        _primary_restart),
}


def _count(cluster: LocalCluster, sql: str) -> int:
    topo = cluster.topology.postgres
    host, port = cluster.address("pg-default")
    deadline = time.monotonic() + 30
    while True:
        try:
            with pg.connect(host, port, topo.user, topo.database) as conn:
                row = conn.execute(sql.encode()).fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error:  # the primary may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_scenario(cluster: LocalCluster, name: str, options: ChaosOptions | None = None,
                 ) -> ChaosReport:
    """Run scenario ``name`` against a running cluster and return its report."""
    if name not in SCENARIOS:
        raise ClusterError(f"unknown chaos scenario {name!r}; choose from "
                           f"{', '.join(SCENARIOS)}")
    opts = options or ChaosOptions()
    scenario = SCENARIOS[name]
    writes = scenario.writes and bool(opts.write_path)
    report = ChaosReport(name, scenario.fault, scenario.expectation)
    host, port = cluster.address("lb")
    before_rows = _count(cluster, opts.count_sql) if writes and opts.count_sql else None

    def plan(i: int) -> tuple[str, str]:
        if writes and i % opts.write_every == 0:
            return "POST", opts.write_path
        return "GET", opts.read_path

    stop = threading.Event()
    box: dict[str, LoadResult] = {}
    loader = threading.Thread(target=lambda: box.setdefault("r", run_load(
        host, port, plan, requests=opts.requests, max_seconds=opts.max_seconds,
        concurrency=opts.concurrency, stop=stop)), daemon=True)
    started = time.monotonic()
    loader.start()
    time.sleep(opts.fault_after)
    fault_at = heal_at = time.monotonic()
    try:
        scenario.inject(cluster)
        time.sleep(opts.fault_seconds)
        heal_at = time.monotonic()
        scenario.heal(cluster)
    finally:
        healed_at = time.monotonic()
        time.sleep(opts.tail_seconds)
        stop.set()
        loader.join(opts.max_seconds + 30)
    load = box.get("r") or LoadResult()

    report.requests = len(load.samples)
    report.statuses = {str(k): v for k, v in sorted(load.statuses().items())}
    report.reads_failed = len(load.failed("GET"))
    report.writes_failed = len(load.failed("POST"))
    report.writes_ok = load.ok("POST")
    report.p99_before_ms = load.p99(started, fault_at) * 1000
    report.p99_fault_ms = load.p99(fault_at, healed_at) * 1000
    report.recovery_seconds = healed_at - heal_at
    if before_rows is not None:
        added = _count(cluster, opts.count_sql) - before_rows
        report.rows_added = added
        report.lost = max(0, report.writes_ok - added)
        # A write whose connection died after COMMIT was sent may have committed although
        # the client got an error: ambiguous, not lost (a client retries it with an
        # idempotency key). Rows beyond every attempt that could have committed would be
        # true duplicates.
        report.ambiguous = max(0, min(report.writes_failed, added - report.writes_ok))
        report.duplicated = max(0, added - report.writes_ok - report.writes_failed)
    report.passed = scenario.judge(report, load, fault_at, healed_at)
    return report
