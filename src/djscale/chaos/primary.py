"""Chaos scenarios of a Patroni-run primary: kill it, kill its node, switch it over.

Each acts on the current leader of the ``default`` group as Patroni reports it
(:mod:`djscale.cluster.ha`) and heals by waiting for what Patroni does, never by promoting
anything itself:

- ``kill-primary``: SIGKILL the leader's postmaster; Patroni, still holding the leader key,
  starts it again (crash recovery) or, if it cannot, lets the key expire;
- ``kill-primary-node``: SIGKILL the leader's Patroni and PostgreSQL together (the machine
  is gone) and keep it down until another member leads; then start its Patroni again,
  which rewinds it (``pg_rewind``) and rejoins it as a replica;
- ``switchover``: ``patronictl switchover`` to a replica (planned maintenance).

The judge (:func:`judge`) holds every one to the same bar: no failed read, every failed
write a 503 answered within a second, a write succeeding again within ``ttl + 5`` seconds
of the fault without restarting an app server, nothing duplicated and, when the group is
``synchronous``, nothing acknowledged lost.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from djscale.chaos.load import LoadResult
from djscale.chaos.network import NetworkFaults, Partition
from djscale.cluster import LocalCluster, ha
from djscale.cluster import patroni as pt
from djscale.cluster import postgres as pg
from djscale.cluster.supervisor import wait_until
from djscale.errors import ClusterError

if TYPE_CHECKING:
    from djscale.chaos.scenarios import ChaosReport, _Fault

__all__ = ["GROUP", "WriteWatch", "group_of", "heal_isolate", "heal_node", "heal_postgres",
           "heal_switchover", "isolate", "judge", "judge_isolate", "kill_node", "kill_postgres",
           "switchover"]

GROUP = "default"
"""The replication group the scenarios act on unless told another (a shard's name)."""

FAST_503_SECONDS = 1.0
"""A write refused during an election must be answered within this."""

SLOW_503_ALLOWANCE = 0.01
"""Share of refused writes that may take longer (queued behind other requests)."""


def group_of(fault: _Fault) -> str:
    """The replication group a scenario acts on: its target argument, else ``default``."""
    return (fault.args[0] if fault.args else "") or GROUP


def _spec(cluster: LocalCluster, name: str) -> tuple[int, bool]:
    group = next((g for g in cluster.topology.database_groups if g.name == name), None)
    if group is None:
        known = ", ".join(g.name for g in cluster.topology.database_groups)
        raise ClusterError(f"no replication group {name!r} in the topology (groups: {known})")
    if group.ha != "patroni":
        raise ClusterError(f"this scenario needs a primary run by Patroni: set "
                           f'ha = "patroni" for group {name!r} in the topology and run '
                           "`djscale cluster up` (docs/ha.md)")
    return group.ha_ttl, group.synchronous


def _begin(fault: _Fault) -> str:
    """Note the leader and timeline before the fault; return the leader's name."""
    group = group_of(fault)
    ttl, synchronous = _spec(fault.cluster, group)
    current = ha.view(fault.cluster, group)
    if current.leader is None:
        raise ClusterError(f"group {group!r} has no leader right now; wait for Patroni "
                           "(`djscale cluster status`) and run the scenario again")
    report = fault.report
    report.group = group
    report.target = fault.target = current.leader.name
    report.target_role = "primary"
    report.ttl_seconds = ttl
    report.synchronous = synchronous
    report.timeline_before = current.timeline
    return current.leader.name


def _struck(fault: _Fault) -> None:
    """Note the moment the fault is real (the runner's fault time precedes the lookups)."""
    fault.report.fault_monotonic = time.monotonic()


def _wait_leader(fault: _Fault, *, other_than: str = "", timeout: float) -> pt.Member:
    """Wait for a leader (other than ``other_than``) on a timeline after the fault's.

    Every way a leader comes back is a promotion, so a new timeline: a failover, and also
    a leader whose crashed PostgreSQL Patroni restarted (it starts as a standby, then
    promotes itself because it still holds the leader key). Until then /cluster may still
    name the old leader on the old timeline, which does not accept writes yet.
    """
    found: list[pt.Member] = []
    before = fault.report.timeline_before or 0

    def elected() -> bool:
        # A cut-off old leader's own API answers with what it last knew: ask it last.
        leader = ha.view(fault.cluster, group_of(fault), avoid=fault.target).leader
        if leader is None or (other_than and leader.name == other_than):
            return False
        if leader.timeline is None or leader.timeline <= before:
            return False
        found.append(leader)
        fault.report.leader_seconds = time.monotonic() - (fault.report.fault_monotonic
                                                          or time.monotonic())
        return True

    if not wait_until(elected, timeout, interval=0.1):
        raise ClusterError(f"no new leader of group {group_of(fault)!r} within "
                           f"{timeout:.0f} s; see `djscale cluster status` and the pg-* logs")
    return found[-1]


def _finish(fault: _Fault, leader: pt.Member) -> None:
    report = fault.report
    report.leader_after = leader.name
    report.timeline_after = ha.view(fault.cluster, group_of(fault), avoid=fault.target).timeline


def _log_size(fault: _Fault, name: str) -> int:
    try:
        return os.path.getsize(fault.cluster.process(name).log)
    except (OSError, ClusterError):
        return 0


def _rewound(fault: _Fault, name: str, since: int) -> str:
    """What Patroni's log of ``name`` says about pg_rewind after byte ``since`` ('' : none)."""
    try:
        with open(fault.cluster.process(name).log, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except (OSError, ClusterError):
        return ""
    diverged = next((line.split("pg_rewind: ", 1)[1] for line in text.splitlines()
                     if "pg_rewind: servers diverged" in line), "")
    if "pg_rewind: Done!" in text:
        return f"pg_rewind rewound it ({diverged})" if diverged else "pg_rewind rewound it"
    return "pg_rewind ran and failed (see its log)" if "pg_rewind exit code" in text else ""


def _rejoin(fault: _Fault, name: str, timeout: float, *, started: float = 0.0,
            log_from: int | None = None, since: str = "Patroni was started again") -> None:
    started = started or time.monotonic()
    ha.wait_rejoined(fault.cluster, group_of(fault), name, timeout)
    fault.report.rejoined = True
    fault.report.timeline_after = ha.view(fault.cluster, group_of(fault)).timeline
    how = _rewound(fault, name, log_from) if log_from is not None else ""
    fault.report.notes.append(f"{name} rejoined as a replica of {fault.report.leader_after} "
                              f"{time.monotonic() - started:.1f} s after {since}"
                              + (f"; {how}" if how else ""))


def kill_postgres(fault: _Fault) -> None:
    """SIGKILL the leader's postmaster (Patroni lives on)."""
    name = _begin(fault)
    proc = fault.cluster.process(name)
    pid = ha.kill_postgres(proc)
    _struck(fault)  # once it is dead: a write answered before that was no recovery
    fault.report.notes.append(f"SIGKILLed the postmaster (pid {pid}) of leader {name}")


def heal_postgres(fault: _Fault) -> None:
    """Wait for a leader (Patroni restarts the killed one or fails over) and all members."""
    leader = _wait_leader(fault, timeout=fault.report.ttl_seconds + 60)
    _finish(fault, leader)
    if leader.name != fault.target:
        _rejoin(fault, fault.target, 120)
    else:
        # Patroni starts the crashed leader as a standby, then promotes it again (a new
        # timeline): done once every member streams on the leader's timeline again.
        group = group_of(fault)
        for member in ha.view(fault.cluster, group).members:
            if member.name != leader.name:
                ha.wait_rejoined(fault.cluster, group, member.name, 60)
        fault.report.rejoined = True
        fault.report.timeline_after = ha.view(fault.cluster, group).timeline
        fault.report.notes.append(f"Patroni restarted PostgreSQL on {leader.name}, which "
                                  "kept the leader key (crash recovery, no failover)")


def kill_node(fault: _Fault) -> None:
    """SIGKILL the leader's Patroni and PostgreSQL; keep the watchdog from restarting it."""
    name = _begin(fault)
    # Down until the heal step: a node that came straight back would keep its leader key.
    fault.cluster._supervise(name, state="stopped")
    proc = fault.cluster.process(name)
    ha.kill_node(proc)
    _struck(fault)  # once both are dead: a write answered before that was no recovery
    fault.killed.add(name)
    fault.report.notes.append(f"SIGKILLed Patroni and PostgreSQL of leader {name}")


def heal_node(fault: _Fault) -> None:
    """Wait for a new leader, then start the old one's Patroni and wait until it rejoined."""
    leader = _wait_leader(fault, other_than=fault.target,
                          timeout=fault.report.ttl_seconds + 60)
    _finish(fault, leader)
    started, log_from = time.monotonic(), _log_size(fault, fault.target)
    fault.cluster.start_service(fault.target, timeout=120)  # pg_rewind happens here
    fault.killed.discard(fault.target)
    _rejoin(fault, fault.target, 120, started=started, log_from=log_from)


def switchover(fault: _Fault) -> None:
    """``patronictl switchover`` from the leader to a running replica."""
    name = _begin(fault)
    current = ha.view(fault.cluster, group_of(fault))
    replicas = sorted((m for m in current.members if not m.leads and m.state == "running"),
                      key=lambda m: (m.role != "sync_standby", m.lag or 0, m.name))
    if not replicas:
        raise ClusterError(f"group {group_of(fault)!r} has no running replica to switch over to")
    candidate = replicas[0].name
    proc = fault.cluster.process(name)
    fault.log_from = _log_size(fault, name)
    _struck(fault)
    pt.switchover(proc.extra["config"], leader=name, candidate=candidate,
                  group=next(g for g in fault.cluster.topology.database_groups
                             if g.name == group_of(fault)),
                  log=fault.cluster.log_dir / "patronictl.log")
    fault.report.notes.append(f"switched over from {name} to {candidate} (patronictl)")


def heal_switchover(fault: _Fault) -> None:
    """Wait until another member leads and the old leader runs as its replica."""
    leader = _wait_leader(fault, other_than=fault.target,
                          timeout=fault.report.ttl_seconds + 60)
    _finish(fault, leader)
    _rejoin(fault, fault.target, 120, log_from=fault.log_from,
            since="the new leader was named")


def judge(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    """Reads never fail; writes fail fast with 503 and are back within ttl + 5 s."""
    return _judge(report, load, t0, t1, fast=True)


def judge_isolate(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    """No split brain: the cut-off leader refused writes, never two nodes accepted them.

    And as for the other failover scenarios: reads never fail, writes are back within
    ttl + 5 s, the old leader rejoins. A refused write is a 503 but need not be fast: a
    connection to the cut-off host gets no answer at all, so it costs the connect deadline
    (``query_deadline_ms``).
    """
    ok = _judge(report, load, t0, t1, fast=False)
    cut_off = [s for s in load.samples if s.method == "POST" and report.cut_until
               and report.fault_monotonic <= s.started and s.started + s.latency
               < report.cut_until]
    done = sorted(s.started + s.latency - report.fault_monotonic for s in cut_off
                  if 200 <= s.status < 300)
    report.notes.append(f"app writes while the old leader was cut off: {len(cut_off)}, "
                        f"{len(done)} succeeded"
                        + (f" (the first {done[0]:.2f} s after the cut)" if done else ""))
    if report.split_brain:
        report.notes.append("SPLIT BRAIN: two nodes accepted writes in the same round")
    if not report.old_refused:
        report.notes.append("the cut-off leader did not refuse writes while it was cut off")
    return ok and not report.split_brain and bool(report.old_refused)


def _judge(report: ChaosReport, load: LoadResult, t0: float, t1: float, *,
           fast: bool) -> bool:
    failed = load.failed("POST")
    not_503 = [s for s in failed if s.status != 503]
    slow = [s for s in failed if s.latency > FAST_503_SECONDS]
    if not_503:
        report.notes.append(f"{len(not_503)} failed writes were not a 503 (statuses "
                            f"{sorted({s.status for s in not_503})})")
    if failed:
        report.notes.append(f"failed writes: {len(failed)} answered 503, slowest "
                            f"{max(s.latency for s in failed):.2f} s, {len(slow)} over "
                            f"{FAST_503_SECONDS:.0f} s")
    # A refused write is answered at once; on a loaded machine a few wait in the app
    # server's queue behind other requests: 99 % within the second, none hangs.
    not_fast = not_503 + ([] if not fast or len(slow) <= SLOW_503_ALLOWANCE * len(failed)
                          else slow)
    struck = report.fault_monotonic or t0
    back = sorted(s.started + s.latency for s in load.samples
                  if s.method == "POST" and 200 <= s.status < 300 and s.started >= struck)
    report.first_write_seconds = back[0] - struck if back else None
    # The outage as clients saw it: the longest stretch without a write answered 2xx, from
    # the last one before the fault (a switchover's old leader takes writes for a while
    # after it began, so the first write after the fault can be no recovery at all).
    ok_ends = sorted(s.started + s.latency for s in load.samples
                     if s.method == "POST" and 200 <= s.status < 300)
    before = [t for t in ok_ends if t < struck]
    marks = ([before[-1]] if before else [struck]) + [t for t in ok_ends if t >= struck]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    report.write_gap_seconds = max(gaps) if gaps else None
    bound = report.ttl_seconds + 5
    in_time = report.first_write_seconds is not None and report.first_write_seconds <= bound
    if not in_time:
        report.notes.append(f"no write succeeded within ttl + 5 = {bound} s of the fault")
    lost_ok = report.lost in (None, 0) or not report.synchronous
    if report.lost and not report.synchronous:
        report.notes.append(f"{report.lost} acknowledged writes lost: asynchronous "
                            "replication (bounded by maximum_lag_on_failover)")
    return (report.requests > 0 and report.reads_failed == 0 and not not_fast and in_time
            and lost_ok and report.duplicated in (None, 0) and report.rejoined)


# ---------------------------------------------------------------------- isolate-primary

PROBE_WRITE = ("BEGIN; SET LOCAL synchronous_commit TO local; SET LOCAL statement_timeout "
               "TO 1500; CREATE TEMP TABLE djscale_isolate_probe (i int) ON COMMIT DROP; "
               "COMMIT")
"""The write tried directly against every node: a real write transaction (it needs a
read-write session and a transaction id) that leaves nothing behind and does not wait for a
synchronous standby (the question is whether the node *accepts* writes)."""

HOLD_AFTER_FAILOVER = 10.0
"""isolate-primary keeps the old leader cut off this long after another node leads."""

WATCH_INTERVAL = 0.25
"""Seconds between two rounds of direct writes against every node."""


def _try_write(host: str, port: int, user: str, database: str) -> str:
    """``"accepted"``, or why ``host:port`` refused the write (first line of the error)."""
    try:
        with pg.connect(host, port, user, database, timeout=2) as conn:
            conn.execute(PROBE_WRITE.encode())
        return "accepted"
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()
        return "refused: " + (text[0] if text else type(exc).__name__)[:160]


@dataclass
class WriteWatch:
    """Tries a write directly against every node of a group, round after round.

    Runs in the chaos process (the root network namespace, which no partition touches):
    it sees each node as it is, not as the partitioned hosts see it.
    """

    nodes: list[tuple[str, str, int]]
    """``(service name, host, port)`` of every node."""
    user: str
    database: str
    rounds: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    """``(time.monotonic(), {name: outcome})`` of each finished round."""
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch in a background thread until :meth:`finish`."""
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="djscale-write-watch")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            outcome = {name: _try_write(host, port, self.user, self.database)
                       for name, host, port in self.nodes}
            self.rounds.append((started, outcome))
            self.stop.wait(max(0.0, WATCH_INTERVAL - (time.monotonic() - started)))

    def finish(self) -> None:
        """Stop watching (waits for the round under way)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def writable(self, since: float, until: float = float("inf")) -> list[tuple[float, list[str]]]:
        """``(time, nodes that accepted)`` of each round that began in ``[since, until)``."""
        return [(t, sorted(n for n, o in outcome.items() if o == "accepted"))
                for t, outcome in list(self.rounds) if since <= t < until]


def isolate(fault: _Fault) -> None:
    """Cut the leader's host off from every other host: etcd, replicas, app servers, LB."""
    name = _begin(fault)
    cluster = fault.cluster
    topo = cluster.topology
    host = topo.host_at(cluster.address(name)[0])
    if host is None or not host.netns:
        raise ClusterError("isolate-primary needs the network-namespace topology: every "
                           "node on a [hosts] machine with a netns (run it through "
                           "`python -m djscale.testing.netlab`, docs/reliability.md)")
    others = tuple(h for h in topo.hosts if h.name != host.name and h.netns)
    spec = next(g for g in topo.database_groups if g.name == group_of(fault))
    nodes = [(n, *cluster.address(n)) for n, _, _ in ha.members(spec)]
    watch = WriteWatch(nodes, spec.user, spec.database)
    fault.watch = watch
    watch.start()
    wait_until(lambda: len(watch.rounds) >= 2, 10, interval=0.05)  # the state before
    fault.network = NetworkFaults()
    fault.network.add(Partition((host,), others))
    _struck(fault)  # once the rules are in: a write answered before that was no recovery
    fault.report.notes.append(f"cut host {host.name} (leader {name}) off from "
                              f"{', '.join(h.name for h in others)} (nftables)")


def heal_isolate(fault: _Fault) -> None:
    """Wait until the old leader refuses writes and another node accepts them; reconnect.

    Then the partition goes and the old leader must rejoin as a replica of the new one.
    """
    watch = fault.watch
    assert isinstance(watch, WriteWatch)
    report = fault.report
    old = fault.target
    struck = report.fault_monotonic

    def settled() -> bool:
        rounds = watch.writable(struck)
        refused = any(old not in names for _, names in rounds)
        return refused and any(n != old for _, names in rounds for n in names)

    timeout = report.ttl_seconds + 60
    if not wait_until(settled, timeout, interval=0.1):
        report.notes.append(f"within {timeout} s of the cut, the old leader did not refuse "
                            "writes or no other node accepted them")
    leader = _wait_leader(fault, other_than=old, timeout=30)
    _finish(fault, leader)
    # A cut-off machine stays cut off until someone repairs it: the app must write to the
    # new leader meanwhile. Keep the cut a while, then reconnect the old leader.
    time.sleep(HOLD_AFTER_FAILOVER)
    cut_until = time.monotonic()
    started, log_from = time.monotonic(), _log_size(fault, old)
    if fault.network is not None:
        fault.network.remove()
    report.notes.append(f"partition removed {cut_until - struck:.1f} s after the cut")
    try:
        _rejoin(fault, old, 120, started=started, log_from=log_from,
                since="the partition was removed")
    finally:
        watch.finish()
    report.cut_until = cut_until
    _judge_isolation(fault, struck, cut_until)


def _judge_isolation(fault: _Fault, struck: float, cut_until: float) -> None:
    """Note what the direct writes saw; set ``report.split_brain`` and ``old_refused``."""
    watch = fault.watch
    assert isinstance(watch, WriteWatch)
    report, old = fault.report, fault.target
    rounds = watch.writable(struck)
    report.split_brain = any(len(names) > 1 for _, names in watch.writable(0.0))
    during = [(t, names) for t, names in rounds if t < cut_until]
    last_old = max((t for t, names in during if old in names), default=None)
    refusals = [(t, o) for t, outcome in watch.rounds if struck <= t < cut_until
                for n, o in outcome.items() if n == old and o != "accepted"]
    report.old_refused = bool(refusals) and (last_old is None or last_old < refusals[-1][0])
    new_first = min((t for t, names in during if any(n != old for n in names)), default=None)
    most = max((len(names) for _, names in watch.writable(0.0)), default=0)
    report.notes.append(
        f"direct writes, {len(watch.rounds)} rounds over {len(watch.nodes)} nodes: the old "
        "leader " + ("accepted none after the cut" if last_old is None else
                     f"accepted its last {last_old - struck:.2f} s after the cut")
        + ("" if not refusals else
           f", refused from {refusals[0][0] - struck:.2f} s ({refusals[0][1]})")
        + "; " + ("no other node accepted writes while it was cut off" if new_first is None
                  else f"{min(n for _, names in during for n in names if n != old)} "
                       f"accepted from {new_first - struck:.2f} s")
        + f"; at most {most} node(s) accepted writes in any round")
