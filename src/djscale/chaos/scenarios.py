"""Chaos scenarios: break one component of a running local cluster under load, measure.

Each scenario drives a bounded load through the load balancer, injects one fault
(SIGKILL an app server, SIGKILL a replica, pause replay on the replicas, stop Redis,
restart the primary, stop the Celery broker, SIGKILL a Celery worker mid-task), heals it,
and reports failed requests, the p99 latency during the fault, the recovery time and,
when writes are part of the load, a reconciliation of the writes acknowledged to the
client against the rows in the database (nothing lost, nothing duplicated). The event
scenarios also reconcile the events those writes published (transactional outbox) with
what the consumer processed (its inbox and, optionally, its effect rows): none lost, none
applied twice, how many redeliveries the inbox skipped and how many events the relay
sent again because their delivery was not confirmed (a message the broker lost). The
expectation of each scenario is part of its definition, so the CLI and the integration
tests judge a run the same way.

When the cluster runs its watchdog (:mod:`djscale.cluster.watchdog`), a service the
scenario SIGKILLed is restarted by the watchdog and the heal step waits for that restart
(``LocalCluster.recover_service``); without one, the scenario restarts it itself.

This module must not change the cluster's configuration: it only stops and starts the
processes the cluster recorded, and runs read-only SQL (plus replay pause/resume) and
read-only broker commands (:mod:`djscale.chaos.events`).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from djscale.chaos import primary
from djscale.chaos.events import (
    EventLedger,
    consumers_mid_task,
    inbox_rows,
    queued_task_ids,
    restore_lock_ttl,
    unacked_task_ids,
)
from djscale.chaos.freeze import Freezer
from djscale.chaos.load import LoadResult, run_load
from djscale.chaos.network import (
    Delay,
    NetworkFaults,
    Partition,
    parse_delay,
    remove_leftovers,
    resolve_hosts,
)
from djscale.cluster import LocalCluster, ha
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
    event_topic: str = ""
    """Topic of the event each write publishes (event scenarios)."""
    event_consumer: str = ""
    """Name of the consumer (its inbox rows) that must process each event once."""
    effect_sql: str = ""
    """Optional SQL selecting ``event_id`` of every effect row (duplicate check)."""
    drain_seconds: float = 45.0
    """How long to wait, after the fault, for every event to be consumed."""
    target: str = ""
    """The service a targeted scenario (``freeze``) acts on, e.g. ``pg-default-replica1``."""
    target_args: tuple[str, ...] = ()
    """More arguments of a targeted scenario (``partition A B``, ``delay HOST MS ...``)."""
    read_tag: str = "read_db"
    """JSON key of a read's answer naming the database that served it ('' : not recorded)."""
    probe_seconds: float = 1.0
    """The app's replica probe interval (``REPLICA_REFRESH_SECONDS``): a probe round."""
    verify_path: str = ""
    """GET path checked after the load stopped: every answer must say ``"stale": false``.

    Answers that also carry ``pid`` and ``l1_flushes`` (the process's whole-L1 flushes by
    reason, ``TieredCache.stats()``) are sampled before the load too, and the report says
    which app processes flushed their L1 meanwhile."""
    verify_requests: int = 40


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
    throughput_before: float = 0.0
    """Requests per second answered in the second half of the run-up to the fault."""
    throughput_fault: float = 0.0
    """Requests per second answered while the fault lasted."""
    throughput_after: float = 0.0
    """Requests per second answered after the fault (a check on the machine's noise)."""
    recovery_seconds: float = 0.0
    target: str = ""
    target_role: str = ""
    """What the target is: ``primary``, ``replica`` (PostgreSQL) or ``other``."""
    target_replicas: list[str] = field(default_factory=list)
    """Replica aliases a network fault cuts off from the app hosts, or slows down."""
    target_reads_during: int | None = None
    """Reads the target replicas served while the fault was in place."""
    target_reads_stopped_seconds: float | None = None
    """From the start of the fault to the last read a target replica served during it."""
    target_reads_back_seconds: float | None = None
    """From the end of the fault to the first read a target replica served again."""
    probe_seconds: float = 1.0
    """The app's replica probe interval the run was judged with (a probe round)."""
    setup_seconds: float = 0.0
    """How long putting the fault in place took (a network fault's reads count from then)."""
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    """Reads by the value of ``read_tag`` in their answer, before / during / after the fault."""
    verified: int | None = None
    """Answers of ``verify_path`` after the load (nobody writing any more)."""
    stale_after: int | None = None
    """Of those, answers that said their value was stale (or that failed)."""
    cache_cut: bool = False
    """A partition between the app hosts and a Redis host (the cache's L1 must be flushed)."""
    l1_processes: int | None = None
    """App processes whose L1 flush counts were seen both before and after the run."""
    l1_flushed_processes: int | None = None
    """Of those, processes that flushed their whole L1 at least once meanwhile."""
    l1_flushes: dict[str, int] = field(default_factory=dict)
    """Their whole-L1 flushes meanwhile, by reason (subscription_lost, redis_back, ...)."""
    l1_flushed_entries: int | None = None
    """Entries those flushes dropped."""
    slowest_write_ms: float | None = None
    """Slowest write started during the fault (freeze of a primary)."""
    writes_back_seconds: float | None = None
    """From the end of the fault to the first write answered 2xx (freeze of a primary)."""
    rows_added: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    ambiguous: int | None = None
    events_published: int | None = None
    events_consumed: int | None = None
    events_lost: int | None = None
    effects_duplicated: int | None = None
    redeliveries_skipped: int | None = None
    held_in_outbox: int | None = None
    in_flight_at_fault: int | None = None
    mid_task_at_fault: int | None = None
    in_flight_consumed: int | None = None
    events_lost_in_broker: int | None = None
    events_redelivered: int | None = None
    """Events the relay sent again because their delivery was not confirmed in time."""
    group: str = ""
    """The replication group a failover scenario acted on (``default``, a shard's name)."""
    ttl_seconds: int = 0
    """Patroni's ``ttl`` of the group (failover scenarios)."""
    synchronous: bool = False
    """The group runs Patroni's strict synchronous mode (failover scenarios)."""
    timeline_before: int | None = None
    timeline_after: int | None = None
    leader_after: str = ""
    first_write_seconds: float | None = None
    """From the fault to the first write answered 2xx (failover scenarios)."""
    write_gap_seconds: float | None = None
    """The longest stretch without a write answered 2xx, from the last one before the
    fault (failover scenarios; None: no write succeeded after the fault)."""
    leader_seconds: float | None = None
    """From the fault to Patroni's REST API naming the new leader (failover scenarios)."""
    rejoined: bool = False
    """The old leader runs as a replica of the new one again (failover scenarios)."""
    split_brain: bool | None = None
    """isolate-primary: two nodes accepted a direct write in the same round."""
    cut_until: float = 0.0
    """isolate-primary: ``time.monotonic()`` when the partition was removed."""
    old_refused: bool | None = None
    """isolate-primary: the cut-off leader refused direct writes (and accepted none after)."""
    fault_monotonic: float = 0.0
    """``time.monotonic()`` when the fault struck (failover scenarios; 0: fault start)."""
    crashed: list[str] = field(default_factory=list)
    events_recovery_seconds: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    """Reads sent a second time on a new connection, by reason (``cut short``: an answer
    the fault cut after its head; ``stale connection``): see :mod:`djscale.chaos.load`."""
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
            *(["retried    reads sent again on a new connection: " + ", ".join(
                f"{why} {n}" for why, n in self.retried.items())] if self.retried else []),
            f"p99        {self.p99_before_ms:.1f} ms before the fault, "
            f"{self.p99_fault_ms:.1f} ms during it",
            f"throughput {self.throughput_before:.0f} req/s before the fault, "
            f"{self.throughput_fault:.0f} req/s during it, {self.throughput_after:.0f} req/s "
            "after it",
            f"recovery   {self.recovery_seconds:.2f} s from restart to healthy",
        ]
        if self.target_replicas:
            stopped = self.target_reads_stopped_seconds
            returned = self.target_reads_back_seconds
            lines.append(f"read set   {', '.join(self.target_replicas)}: "
                         f"{self.target_reads_during} reads while the fault was in place; last "
                         + ("none once the fault was in place" if stopped is None
                            or stopped <= 0 else f"{stopped:.2f} s into the fault")
                         + f" (in place {self.setup_seconds:.2f} s after it began)"
                         + "; first read after it "
                         + ("never" if returned is None else f"{returned:.2f} s after its end"))
        if self.slowest_write_ms is not None:
            back = ("never" if self.writes_back_seconds is None
                    else f"{self.writes_back_seconds:.2f} s after the fault ended")
            lines.append(f"writes     slowest during the fault {self.slowest_write_ms:.0f} ms; "
                         f"first success {back}")
        if self.leader_after:
            first = ("never" if self.first_write_seconds is None
                     else f"{self.first_write_seconds:.2f} s")
            lines.append(f"failover   leader {self.target} (timeline {self.timeline_before}) -> "
                         f"{self.leader_after} (timeline {self.timeline_after}); leader named "
                         f"{self.leader_seconds or 0:.2f} s, first write {first} after the "
                         f"fault (ttl {self.ttl_seconds} s, "
                         f"{'synchronous' if self.synchronous else 'asynchronous'}); old "
                         f"leader {'rejoined' if self.rejoined else 'NOT rejoined'}")
            if self.write_gap_seconds is not None:
                lines.append(f"outage     {self.write_gap_seconds:.2f} s without a successful "
                             "write (the longest stretch, from the last one before the fault)")
        if self.rows_added is not None:
            lines.append(f"writes     {self.writes_ok} acknowledged, {self.rows_added} rows added: "
                         f"lost {self.lost}, duplicated {self.duplicated}, committed but "
                         f"answered with an error {self.ambiguous}")
        if self.events_published is not None:
            inside = ("" if not self.events_lost_in_broker else
                      f" ({self.events_lost_in_broker} of them inside the broker)")
            effects = ("" if self.effects_duplicated is None else
                       f", effects applied twice {self.effects_duplicated}")
            lines.append(f"events     {self.writes_ok} acknowledged writes, "
                         f"{self.events_published} events published, {self.events_consumed} "
                         f"consumed exactly once: lost {self.events_lost}{inside}{effects}; "
                         f"{self.redeliveries_skipped} redeliveries skipped by the inbox; "
                         f"{self.events_redelivered} sent again by the relay (delivery "
                         "unconfirmed)")
            if self.held_in_outbox is not None:
                lines.append(f"outbox     {self.held_in_outbox} events held in the outbox "
                             "while the broker was down")
            if self.in_flight_at_fault is not None:
                lines.append(f"in flight  {self.mid_task_at_fault} consumers mid-task "
                             f"(uncommitted inbox row) and {self.in_flight_at_fault} "
                             "unacknowledged messages when the worker was killed")
            lines.append(f"drained    {self.events_recovery_seconds:.2f} s after the restart "
                         "every event was consumed")
        for phase, counts in self.sources.items():
            lines.append(f"answers    {phase} the fault: " + ", ".join(
                f"{k or '?'} {v}" for k, v in sorted(counts.items())))
        if self.verified is not None:
            lines.append(f"afterwards {self.verified} reads of the check path with nobody "
                         f"writing: {self.stale_after} stale or failed")
        if self.l1_processes is not None:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.l1_flushes.items()))
            lines.append(f"L1         {self.l1_flushed_processes} of {self.l1_processes} app "
                         "processes (seen before and after) flushed their L1 in the run: "
                         f"{reasons or 'no flush'}; {self.l1_flushed_entries} entries "
                         "dropped")
        lines += [f"crashed    {c}" for c in self.crashed]
        lines += [f"note       {n}" for n in self.notes]
        lines.append(f"result     {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


@dataclass
class _Fault:
    """A fault in progress: the cluster, the report to note observations in, the ledger."""

    cluster: LocalCluster
    report: ChaosReport
    ledger: EventLedger | None = None
    in_flight: list[str] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    """Services the scenario killed itself and restarts in its heal step."""
    restarts: dict[str, int] = field(default_factory=dict)
    """Watchdog restart counts when the scenario last looked (crashes of its own)."""
    target: str = ""
    freezer: Freezer | None = None
    network: NetworkFaults | None = None
    args: tuple[str, ...] = ()
    log_from: int = 0
    """Size of the target's log when the fault struck (what it logged since: a rejoin)."""
    watch: Any = None
    """isolate-primary: the :class:`~djscale.chaos.primary.WriteWatch` of direct writes."""


@dataclass(frozen=True)
class _Scenario:
    fault: str
    expectation: str
    inject: Callable[[_Fault], None]
    heal: Callable[[_Fault], None]
    writes: bool
    judge: Callable[[ChaosReport, LoadResult, float, float], bool]
    events: bool = False
    network: bool = False
    """A network fault: events reconciled when the options name them; a longer tail."""
    prepare: Callable[[_Fault], None] | None = None
    """Runs before the load starts: checks arguments, gets the fault ready without acting."""


def _on(action: Callable[[LocalCluster], None]) -> Callable[[_Fault], None]:
    return lambda fault: action(fault.cluster)


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


def _freeze(fault: _Fault) -> None:
    cluster, name = fault.cluster, fault.target
    try:
        proc = cluster.process(name)
    except KeyError:
        raise ClusterError(f"this cluster has no service {name!r}; `djscale cluster status` "
                           "lists them") from None
    if not proc.pid:
        raise ClusterError(f"service {name!r} is not running")
    fault.report.target = name
    fault.report.target_role = (proc.role if proc.kind == "postgres"
                                and proc.role in ("primary", "replica") else "other")
    fault.freezer = Freezer(proc.pid)
    stopped = fault.freezer.freeze()
    fault.report.notes.append(f"froze {name}: {len(stopped)} processes stopped (SIGSTOP)")


def _thaw(fault: _Fault) -> None:
    if fault.freezer is not None:
        fault.freezer.thaw()


def _frozen(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    role = report.target_role
    writes = [s for s in load.window(t0, t1) if s.method == "POST"]
    if writes:
        report.slowest_write_ms = max(s.latency for s in writes) * 1000
    back = sorted(s.started + s.latency for s in load.samples
                  if s.method == "POST" and 200 <= s.status < 300 and s.started >= t1)
    if back:
        report.writes_back_seconds = back[0] - t1
    if role == "replica":
        # Reads and writes go on; the frozen replica costs each process one deadline.
        ok = (report.reads_failed == 0 and report.writes_failed == 0 and report.requests > 0
              and report.throughput_fault >= 0.8 * report.throughput_before
              and report.p99_fault_ms < 1000)
        if report.throughput_fault < 0.8 * report.throughput_before:
            report.notes.append("throughput during the freeze is below 0.8x of before")
        return ok
    if role == "primary":
        # Reads go on; writes fail fast (503 within 1 s, none hangs) and succeed within
        # 2 s of the thaw.
        hung = [s for s in load.samples if s.method == "POST" and s.latency >= 1.0
                and t0 - 1.0 <= s.started < t1]
        not_503 = [s for s in load.failed("POST") if s.status != 503]
        if hung:
            report.notes.append(f"{len(hung)} writes took 1 s or more during the freeze")
        if not_503:
            report.notes.append(f"{len(not_503)} failed writes were not a 503")
        recovered = report.writes_back_seconds is not None and report.writes_back_seconds <= 2.0
        if not recovered:
            report.notes.append("no write succeeded within 2 s of the end of the freeze")
        return (report.reads_failed == 0 and not hung and not not_503 and recovered
                and report.lost in (None, 0) and report.duplicated in (None, 0))
    return _no_failed_reads(report, load, t0, t1)


def _network_prepare(fault: _Fault, made: Partition | Delay,
                     slowed: tuple[str, ...]) -> None:
    """Get a network fault ready; note it and the replicas it takes from the app hosts."""
    cluster = fault.cluster
    left = remove_leftovers(cluster.topology)
    if left:
        fault.report.notes.append("removed what an earlier run left: " + "; ".join(
            f"{host}: {', '.join(what)}" for host, what in left.items()))
    fault.network = NetworkFaults()
    fault.network.prepare(made)
    fault.report.target = " ".join(fault.args)
    fault.report.target_replicas = [
        str(p.extra.get("alias", p.name)) for p in cluster.processes()
        if p.kind == "postgres" and p.role == "replica"
        and (h := cluster.topology.host_at(p.host)) is not None and h.name in slowed]
    fault.report.notes.append(made.describe())


def _app_hosts(cluster: LocalCluster) -> set[str]:
    return {h.name for p in cluster.processes() if p.kind == "gunicorn"
            and (h := cluster.topology.host_at(p.host)) is not None}


def _prepare_partition(fault: _Fault) -> None:
    if len(fault.args) != 2:
        raise ClusterError("partition takes two sides: `djscale chaos partition A B` (hosts or "
                           "services, several joined with commas, e.g. app1,app2 db-replica1)")
    cluster = fault.cluster
    services = {p.name: p.host for p in cluster.processes()}
    left, right = (resolve_hosts(cluster.topology, side, services) for side in fault.args)
    apps = _app_hosts(cluster)
    # A replica is cut off from reads when the app hosts are on the other side.
    cut = tuple(h.name for side, other in ((left, right), (right, left))
                if apps & {o.name for o in other} for h in side)
    _network_prepare(fault, Partition(left, right), cut)
    redis_hosts = {h.name for p in cluster.processes() if p.kind == "redis"
                   and (h := cluster.topology.host_at(p.host)) is not None}
    fault.report.cache_cut = bool(redis_hosts & set(cut))


def _prepare_delay(fault: _Fault) -> None:
    if not fault.args:
        raise ClusterError("delay takes HOST MS [JITTER] [LOSS%], e.g. "
                           "`djscale chaos delay db-replica1 300`")
    cluster = fault.cluster
    services = {p.name: p.host for p in cluster.processes()}
    hosts = resolve_hosts(cluster.topology, fault.args[0], services)
    if len(hosts) != 1:
        raise ClusterError("delay acts on one host; run it once per host")
    ms, jitter, loss = parse_delay(fault.args[1:])
    _network_prepare(fault, Delay(hosts[0], ms, jitter, loss), (hosts[0].name,))


def _prepare_isolate(fault: _Fault) -> None:
    """Remove what a killed run may have left in the hosts' namespaces (before the load)."""
    if fault.cluster.topology.hosts:
        remove_leftovers(fault.cluster.topology)


def _network_install(fault: _Fault) -> None:
    if fault.network is not None:
        fault.network.install()


def _heal_network(fault: _Fault) -> None:
    if fault.network is not None:
        fault.network.remove()
    if fault.ledger is not None:
        _revive_workers(fault)


def _network_judge(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    ok = report.requests > 0 and report.reads_failed == 0 and report.writes_failed == 0
    targets = set(report.target_replicas)
    if targets:
        on_target = [s for s in load.samples if s.method == "GET" and s.tag in targets]
        # From the moment the rules were in place (starting a delayer takes a moment) to
        # the moment their removal began (t1 is when it ended).
        begun, ended = t0 + report.setup_seconds, t1 - report.recovery_seconds
        during = [s.started for s in on_target if begun <= s.started < ended]
        after = [s.started for s in on_target if s.started >= t1]
        report.target_reads_during = len(during)
        report.target_reads_stopped_seconds = max(during) - begun if during else None
        report.target_reads_back_seconds = min(after) - t1 if after else None
        rounds = 2 * report.probe_seconds
        if during and max(during) - begun > rounds:
            report.notes.append(f"the replica still served reads {max(during) - begun:.2f} s "
                                f"into the fault (two probe rounds: {rounds:.1f} s)")
            ok = False
        if not after:
            report.notes.append("the replica served no read after the fault")
            ok = False
    if report.events_published is not None:
        ok = ok and _events_delivered(report, load, t0, t1)
    if report.stale_after:
        report.notes.append(f"{report.stale_after} reads after the fault served a stale value")
        ok = False
    if (report.cache_cut and report.l1_processes and t1 - t0 >= _L1_MUST_FLUSH_AFTER
            and report.l1_flushed_processes != report.l1_processes):
        report.notes.append(f"{report.l1_processes - (report.l1_flushed_processes or 0)} app "
                            "processes cut off from Redis did not flush their L1")
        ok = False
    return ok


def _kill(prefix: str) -> Callable[[_Fault], None]:
    return lambda f: f.cluster.stop_service(_first(f.cluster, prefix), crash=True)


def _start(prefix: str) -> Callable[[_Fault], None]:
    # With a watchdog the crashed service comes back by itself: wait for it.
    return lambda f: f.cluster.recover_service(_first(f.cluster, prefix))


def _broker(cluster: LocalCluster) -> str:
    # A Redis Cluster topology gives Celery a node of its own; otherwise it is "redis".
    return "redis-broker" if "redis-broker" in cluster.state.services else "redis"


def _stop_broker(fault: _Fault) -> None:
    fault.cluster.stop_service(_broker(fault.cluster))


def _start_broker(fault: _Fault) -> None:
    if fault.ledger is not None:
        # What the outbox holds at the end of the outage: events written meanwhile.
        fault.report.held_in_outbox = fault.ledger.pending()
    fault.cluster.start_service(_broker(fault.cluster))
    _revive_workers(fault)


def _kill_worker_mid_task(fault: _Fault) -> None:
    """SIGKILL the first Celery worker (its process group) while a consumer is mid-task."""
    name = _first(fault.cluster, "celery-")
    deadline = time.monotonic() + 10
    mid_task = consumers_mid_task(fault.cluster)
    while not mid_task and time.monotonic() < deadline:
        time.sleep(0.01)
        mid_task = consumers_mid_task(fault.cluster)
    fault.killed.add(name)
    fault.cluster.stop_service(name, crash=True)
    fault.report.mid_task_at_fault = mid_task
    # The worker is gone: nothing acknowledges or restores these until it is back.
    try:
        fault.in_flight = unacked_task_ids(fault.cluster)
        lock = restore_lock_ttl(fault.cluster)
    except Exception as exc:  # noqa: BLE001 - the report says so; the worker must restart
        fault.report.notes.append(f"cannot read the broker's unacknowledged messages: {exc}")
    else:
        if lock >= 0:
            fault.report.notes.append(
                f"the killed worker held the broker's restore lock (unacked_mutex, {lock} s "
                "left): unacknowledged messages come back only after it expires")
    fault.report.in_flight_at_fault = len(fault.in_flight)


def _start_worker(fault: _Fault, name: str = "") -> None:
    """Start a (killed) worker again and wait until it consumes (its log says "ready.").

    When the cluster's watchdog restarts workers, wait for its restart instead (it counts
    the worker as running once its log said "ready." again).
    """
    name = name or _first(fault.cluster, "celery-")
    if fault.cluster.supervised(name):
        fault.cluster.recover_service(name)
        return
    log = Path(fault.cluster.process(name).log)
    offset = log.stat().st_size if log.exists() else 0
    fault.cluster.start_service(name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            fh.seek(offset)
            if b" ready." in fh.read():
                return
        time.sleep(0.05)
    raise ClusterError(f"{name} did not say 'ready.' within 60 s after its restart; see {log}")


def _revive_workers(fault: _Fault) -> None:
    """Restart a worker that died on its own during the fault, as its supervisor would.

    The scenario keeps running (a production worker runs under systemd or Kubernetes,
    which restart it) but the report names the crash and the worker's last words. With
    the cluster's watchdog, the watchdog restarts it and its restart count tells the crash.
    """
    for proc in fault.cluster.processes():
        restarts = int(proc.supervision.get("restarts", 0))
        if proc.kind == "celery" and proc.name not in fault.killed and \
                restarts > fault.restarts.get(proc.name, restarts):
            fault.report.crashed.append(
                f"{proc.name} exited on its own during the fault ({_last_error(Path(proc.log))}"
                f"; {proc.supervision.get('last_exit', '')}); restarted by the watchdog")
        fault.restarts[proc.name] = restarts
        if proc.kind != "celery" or proc.alive() or proc.name in fault.killed:
            continue
        if fault.cluster.supervised(proc.name):
            continue  # the watchdog restarts it (and the next look reports it)
        reason = _last_error(Path(proc.log))
        fault.report.crashed.append(f"{proc.name} exited on its own during the fault "
                                    f"({reason}); restarted, as a process supervisor would")
        _start_worker(fault, proc.name)


def _last_error(log: Path) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 200_000))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "no log"
    found = [ln for ln in lines if "CRITICAL/" in ln or "Unrecoverable error" in ln]
    return found[-1].split("] ", 1)[-1][:200] if found else "no error in its log"


def _events_delivered(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    ok = (report.requests > 0 and report.reads_failed == 0 and report.writes_failed == 0
          and bool(report.events_published) and report.events_lost == 0
          and not report.effects_duplicated)
    if report.held_in_outbox is not None and report.held_in_outbox < 1:
        report.notes.append("no event waited in the outbox for the broker: the fault did not "
                            "exercise the outbox (make the fault longer)")
        ok = False
    if report.in_flight_at_fault is not None:
        if report.in_flight_at_fault < 1:
            report.notes.append("no message was in flight when the worker was killed: the "
                                "fault did not happen mid-task (slow the consumer: ?work_ms=)")
            ok = False
        elif report.in_flight_consumed != report.in_flight_at_fault:
            ok = False
    return ok


SCENARIOS: dict[str, _Scenario] = {
    "kill-app-server": _Scenario(
        "SIGKILL one app server; the watchdog restarts it (the scenario does without one)",
        "zero failed idempotent requests",
        _kill("app-"), _start("app-"), False, _no_failed_reads),
    "kill-replica": _Scenario(
        "SIGKILL one replica, restart it", "zero failed idempotent requests",
        _on(lambda c: c.stop_service(_replicas(c)[0], crash=True)),
        _on(lambda c: c.recover_service(_replicas(c)[0])), False, _no_failed_reads),
    "pause-replication": _Scenario(
        "pause WAL replay on every replica past max_lag, resume it",
        "zero failed requests; reads fall back to the primary while replicas lag",
        _on(lambda c: _replay(c, True)), _on(lambda c: _replay(c, False)), True,
        _no_failed_reads),
    "stop-redis": _Scenario(
        "stop Redis, start it again", "zero failed idempotent requests",
        _on(lambda c: c.stop_service("redis")), _on(lambda c: c.start_service("redis")), False,
        _no_failed_reads),
    "restart-primary": _Scenario(
        "stop the primary (fast shutdown), start it again",
        "writes fail fast with 503 during the restart and succeed after it; reads continue; "
        "no acknowledged write lost or duplicated",
        _on(lambda c: c.stop_service("pg-default")),
        _on(lambda c: c.start_service("pg-default")), True, _primary_restart),
    "stop-broker": _Scenario(
        "stop the Celery broker while writes publish events, start it again",
        "zero failed requests; the outbox holds the events until the broker is back, then "
        "every event is consumed exactly once (zero lost, none applied twice)",
        _stop_broker, _start_broker, True, _events_delivered, events=True),
    "kill-worker": _Scenario(
        "SIGKILL the Celery worker while a consumer is mid-task; the watchdog restarts it "
        "(the scenario does without one)",
        "zero failed requests; the unacknowledged messages come back (acks_late) and every "
        "event is consumed exactly once (zero lost, none applied twice)",
        _kill_worker_mid_task, _start_worker, True, _events_delivered, events=True),
    "freeze": _Scenario(
        "SIGSTOP the whole process tree of one service (a silent peer), SIGCONT it after",
        "a replica: zero failed requests, throughput during the freeze >= 0.8x of before, "
        "p99 under 1 s; the primary: zero failed reads, writes answered 503 within 1 s "
        "(none hangs) and succeeding again within 2 s of the thaw; else zero failed reads",
        _freeze, _thaw, True, _frozen),
    "partition": _Scenario(
        "drop every packet between hosts A and hosts B (nftables in their namespaces), "
        "remove the rules after",
        "zero failed requests; a replica cut off from the app hosts stops serving reads "
        "within two probe rounds and serves them again after the fault; app hosts cut off "
        "from Redis for 10 s or more flush their L1, and the check path (when given) serves "
        "nothing stale afterwards; events (when given) consumed exactly once",
        _network_install, _heal_network, True, _network_judge, network=True,
        prepare=_prepare_partition),
    "delay": _Scenario(
        "delay every packet one host sends (tc netem, or an NFQUEUE delayer), optionally "
        "with jitter and loss; remove it after",
        "zero failed requests; a delayed replica stops serving reads within two probe rounds "
        "and serves them again after the fault",
        _network_install, _heal_network, True, _network_judge, network=True,
        prepare=_prepare_delay),
    "kill-primary": _Scenario(
        "SIGKILL the postmaster of the Patroni leader (Patroni restarts it or fails over)",
        "zero failed reads; failed writes are 503s within 1 s; writes succeed again within "
        "ttl + 5 s without restarting app servers; nothing duplicated (nothing lost with "
        "synchronous = true)",
        primary.kill_postgres, primary.heal_postgres, True, primary.judge),
    "kill-primary-node": _Scenario(
        "SIGKILL the Patroni leader's Patroni and PostgreSQL (its node is gone) until another "
        "member leads, then start it again: it rejoins as a replica (pg_rewind)",
        "zero failed reads; failed writes are 503s within 1 s; writes succeed again within "
        "ttl + 5 s without restarting app servers; the old leader rejoins; nothing "
        "duplicated (nothing lost with synchronous = true)",
        primary.kill_node, primary.heal_node, True, primary.judge),
    "isolate-primary": _Scenario(
        "cut the Patroni leader's host off from every other host (etcd, replicas, app "
        "servers; nftables), until it refuses writes and another node leads; then reconnect "
        "it: it rejoins as a replica",
        "no split brain: the cut-off leader refuses a direct write, never two nodes accept "
        "one; zero failed reads; writes succeed again within ttl + 5 s; the old leader "
        "rejoins; nothing duplicated (nothing lost with synchronous = true)",
        primary.isolate, primary.heal_isolate, True, primary.judge_isolate,
        prepare=_prepare_isolate),
    "switchover": _Scenario(
        "planned switchover of the Patroni leader to a replica (patronictl switchover)",
        "zero failed reads; failed writes are 503s within 1 s; writes succeed again within "
        "ttl + 5 s; the old leader rejoins as a replica; nothing lost or duplicated",
        primary.switchover, primary.heal_switchover, True, primary.judge),
}

FAILOVER = frozenset({"kill-primary", "kill-primary-node", "switchover", "isolate-primary"})
"""Scenarios of a Patroni-run primary (:mod:`djscale.chaos.primary`)."""

TARGETED = frozenset({"freeze", "partition", "delay"})
"""Scenarios that need a target service (``ChaosOptions.target``)."""


_L1_MUST_FLUSH_AFTER = 10.0
"""A cache partition at least this long must make every app process flush its L1 (its
listener gives up on a silent connection after about 5 s without an answer to PING)."""

_Flushes = dict[int, tuple[dict[str, int], int]]
"""pid -> (whole-L1 flushes by reason, entries dropped), as the check path reports them."""


def _verify(host: str, port: int, opts: ChaosOptions) -> tuple[int, int, _Flushes]:
    """GET ``verify_path`` a few times: (answers, answers stale or failed, L1 flushes)."""
    bad = 0
    flushes: _Flushes = {}
    for _ in range(opts.verify_requests):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", opts.verify_path)
            resp = conn.getresponse()
            body = json.loads(resp.read() or b"{}")
            fresh = resp.status == 200 and isinstance(body, dict) and body.get("stale") is False
            bad += not fresh
            if isinstance(body, dict) and isinstance(body.get("l1_flushes"), dict):
                counts = {str(k): int(v) for k, v in body["l1_flushes"].items()}
                seen = flushes.get(int(body.get("pid", 0)), ({}, 0))
                if sum(counts.values()) >= sum(seen[0].values()):  # counters only grow
                    flushes[int(body.get("pid", 0))] = (
                        counts, int(body.get("l1_flushed_entries", 0)))
        except (OSError, http.client.HTTPException, ValueError, TypeError):
            bad += 1
        finally:
            conn.close()
    return opts.verify_requests, bad, flushes


def _l1_flushes(report: ChaosReport, before: _Flushes, after: _Flushes) -> None:
    """Note the whole-L1 flushes of the app processes seen before and after the run."""
    both = sorted(set(before) & set(after))
    if not both:
        return
    total: Counter[str] = Counter()
    flushed = entries = 0
    for pid in both:
        (was, was_entries), (now, now_entries) = before[pid], after[pid]
        delta = {k: v - was.get(k, 0) for k, v in now.items() if v > was.get(k, 0)}
        total.update(delta)
        flushed += bool(delta)
        entries += now_entries - was_entries
    report.l1_processes = len(both)
    report.l1_flushed_processes = flushed
    report.l1_flushes = dict(total)
    report.l1_flushed_entries = entries


def _json_tag(key: str) -> Callable[[str, bytes], str]:
    """Label a GET's answer with the value of ``key`` in its JSON body ('' when absent)."""
    def tag(method: str, body: bytes) -> str:
        if method != "GET" or not body.startswith(b"{"):
            return ""
        try:
            value = json.loads(body).get(key)
        except ValueError:
            return ""
        return value if isinstance(value, str) else ""
    return tag


def _rate(load: LoadResult, since: float, until: float) -> float:
    """Requests per second answered (any status) among those started in [since, until)."""
    if until <= since:
        return 0.0
    return len(load.window(since, until)) / (until - since)


def _count(cluster: LocalCluster, sql: str) -> int:
    topo = cluster.topology.postgres
    deadline = time.monotonic() + 30
    while True:
        try:
            # With Patroni, the primary is whichever member leads now.
            host, port = ha.leader_address(cluster, topo, timeout=30)
            with pg.connect(host, port, topo.user, topo.database) as conn:
                row = conn.execute(sql.encode()).fetchone()
                return int(row[0]) if row else 0
        except (psycopg.Error, ClusterError):  # the primary may still be starting
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
    if scenario.events and not (opts.write_path and opts.event_topic and opts.event_consumer):
        raise ClusterError(f"scenario {name!r} needs writes that publish events: give "
                           "--write-path, --event-topic and --event-consumer (see "
                           "docs/reliability.md)")
    if name in TARGETED and not opts.target:
        raise ClusterError(f"scenario {name!r} needs the service to act on, e.g. "
                           f"`djscale chaos {name} pg-default-replica1`")
    writes = scenario.writes and bool(opts.write_path)
    report = ChaosReport(name, scenario.fault, scenario.expectation)
    host, port = cluster.address("lb")
    before_rows = _count(cluster, opts.count_sql) if writes and opts.count_sql else None
    events = scenario.events or (scenario.network and bool(opts.event_topic))
    ledger = (EventLedger(cluster, topic=opts.event_topic, consumer=opts.event_consumer,
                          effect_sql=opts.effect_sql) if events else None)
    fault = _Fault(cluster, report, ledger, target=opts.target,
                   args=(opts.target, *opts.target_args))
    report.probe_seconds = opts.probe_seconds
    tag = _json_tag(opts.read_tag) if opts.read_tag else None
    fault.restarts = {p.name: int(p.supervision.get("restarts", 0)) for p in cluster.processes()}

    def plan(i: int) -> tuple[str, str]:
        if writes and i % opts.write_every == 0:
            return "POST", opts.write_path
        return "GET", opts.read_path

    if scenario.prepare is not None:
        scenario.prepare(fault)  # before any load: bad arguments fail here
    flushes_before = _verify(host, port, opts)[2] if opts.verify_path else {}
    stop = threading.Event()
    box: dict[str, LoadResult] = {}
    loader = threading.Thread(target=lambda: box.setdefault("r", run_load(
        host, port, plan, requests=opts.requests, max_seconds=opts.max_seconds,
        concurrency=opts.concurrency, stop=stop, tag=tag)), daemon=True)
    started = fault_at = heal_at = time.monotonic()
    healing = interrupted = False
    try:
        loader.start()
        time.sleep(opts.fault_after)
        fault_at = heal_at = time.monotonic()
        scenario.inject(fault)
        report.setup_seconds = time.monotonic() - fault_at
        time.sleep(opts.fault_seconds)
        heal_at = time.monotonic()
        healing = True
        scenario.heal(fault)
    except BaseException:
        interrupted = True
        raise
    finally:
        if not healing and fault.freezer is not None:
            fault.freezer.thaw()  # interrupted (Ctrl-C) or failed: never leave it stopped
        if fault.network is not None:
            fault.network.remove()  # idempotent; removes the rules even when interrupted
        healed_at = time.monotonic()
        if not interrupted:
            # A network fault's replica comes back with the probe's next connection: look
            # long enough to see it.
            time.sleep(max(opts.tail_seconds, 8.0) if scenario.network else opts.tail_seconds)
        stop.set()
        if loader.ident is not None:  # started
            loader.join(opts.max_seconds + 30)
    load = box.get("r") or LoadResult()

    report.requests = len(load.samples)
    report.statuses = {str(k): v for k, v in sorted(load.statuses().items())}
    report.retried = dict(sorted(load.retried().items()))
    report.reads_failed = len(load.failed("GET"))
    report.writes_failed = len(load.failed("POST"))
    report.writes_ok = load.ok("POST")
    report.p99_before_ms = load.p99(started, fault_at) * 1000
    report.p99_fault_ms = load.p99(fault_at, healed_at) * 1000
    # The second half of the run-up only: the first requests pay for new connections and
    # the app processes' first replica probe, which would flatter the ratio.
    report.throughput_before = _rate(load, fault_at - (fault_at - started) / 2, fault_at)
    report.throughput_fault = _rate(load, fault_at, heal_at)
    report.throughput_after = _rate(load, healed_at, healed_at + opts.tail_seconds)
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
    if opts.read_tag:
        for phase, since, until in (("before", started, fault_at), ("during", fault_at, heal_at),
                                    ("after", heal_at, float("inf"))):
            counts = Counter(s.tag for s in load.window(since, until) if s.method == "GET")
            if any(counts):
                report.sources[phase] = dict(counts)
    if opts.verify_path:
        report.verified, report.stale_after, flushes_after = _verify(host, port, opts)
        _l1_flushes(report, flushes_before, flushes_after)
    if ledger is not None:
        _reconcile_events(fault, ledger, opts, since_heal=time.monotonic() - healed_at)
    report.passed = scenario.judge(report, load, fault_at, healed_at)
    return report


def _reconcile_events(fault: _Fault, ledger: EventLedger, opts: ChaosOptions, *,
                      since_heal: float) -> None:
    """Wait for the events of the run to be consumed, then count lost and duplicates."""
    report = fault.report
    fault.killed.clear()  # healed: from now on a dead worker died on its own
    fault.restarts = {p.name: int(p.supervision.get("restarts", 0))
                      for p in fault.cluster.processes()}
    tally, consumed_after, _ = ledger.drain(timeout=opts.drain_seconds,
                                            tick=lambda: _revive_workers(fault))
    report.events_published = tally.published
    report.events_consumed = tally.consumed
    # Every acknowledged write committed exactly one event with it: an acknowledged write
    # without its event, or an event never consumed, is lost.
    report.events_lost = (tally.published - tally.consumed
                          + max(0, report.writes_ok - tally.published))
    report.redeliveries_skipped = tally.duplicates_skipped
    report.events_redelivered = tally.redelivered
    report.events_recovery_seconds = since_heal + consumed_after
    if tally.effects is not None and tally.distinct_effects is not None:
        report.effects_duplicated = tally.effects - tally.distinct_effects
        if tally.distinct_effects != tally.consumed:
            report.notes.append(f"{tally.distinct_effects} events have an effect row but "
                                f"{tally.consumed} an inbox row")
    if tally.pending:
        report.notes.append(f"{tally.pending} events still wait in the outbox after "
                            f"{opts.drain_seconds:.0f} s")
    if report.events_lost:
        _explain_lost(fault, ledger)
    if fault.in_flight:
        ids = [i for i in fault.in_flight if i != "?"]
        # The inbox allows one row per (consumer, event): one row each = consumed once.
        report.in_flight_consumed = inbox_rows(fault.cluster, consumer=opts.event_consumer,
                                               event_ids=ids)
        report.notes.append(f"messages unacknowledged at the kill: {', '.join(ids)}; "
                            f"{report.in_flight_consumed} of them consumed exactly once "
                            "after the restart")


def _explain_lost(fault: _Fault, ledger: EventLedger) -> None:
    """Say where each unconsumed event is: outbox, broker, or gone from the broker."""
    try:
        in_broker = set(queued_task_ids(fault.cluster)) | set(unacked_task_ids(fault.cluster))
    except Exception as exc:  # noqa: BLE001 - the explanation is best effort
        fault.report.notes.append(f"cannot read the broker to explain lost events: {exc}")
        return
    gone = []
    for event_id, accepted in ledger.unconsumed():
        if not accepted:
            continue  # counted as still waiting in the outbox
        if event_id in in_broker:
            fault.report.notes.append(f"event {event_id} is still in the broker, unconsumed")
        else:
            gone.append(event_id)
    fault.report.events_lost_in_broker = len(gone)
    if gone:
        fault.report.notes.append(
            f"{len(gone)} event(s) the broker accepted are gone from it and were never "
            f"consumed: {', '.join(gone)} (the outbox had marked them published)")
