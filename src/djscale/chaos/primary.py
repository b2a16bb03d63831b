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

import os
import time
from typing import TYPE_CHECKING

from djscale.chaos.load import LoadResult
from djscale.cluster import LocalCluster, ha
from djscale.cluster import patroni as pt
from djscale.cluster.supervisor import wait_until
from djscale.errors import ClusterError

if TYPE_CHECKING:
    from djscale.chaos.scenarios import ChaosReport, _Fault

__all__ = ["GROUP", "group_of", "heal_node", "heal_postgres", "heal_switchover", "judge",
           "kill_node", "kill_postgres", "switchover"]

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
        leader = ha.view(fault.cluster, group_of(fault)).leader
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
    report.timeline_after = ha.view(fault.cluster, group_of(fault)).timeline


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
            log_from: int | None = None) -> None:
    started = started or time.monotonic()
    ha.wait_rejoined(fault.cluster, group_of(fault), name, timeout)
    fault.report.rejoined = True
    fault.report.timeline_after = ha.view(fault.cluster, group_of(fault)).timeline
    how = _rewound(fault, name, log_from) if log_from is not None else ""
    fault.report.notes.append(f"{name} rejoined as a replica of {fault.report.leader_after} "
                              f"{time.monotonic() - started:.1f} s after Patroni was started again"
                              + (f"; {how}" if how else ""))


def kill_postgres(fault: _Fault) -> None:
    """SIGKILL the leader's postmaster (Patroni lives on)."""
    name = _begin(fault)
    proc = fault.cluster.process(name)
    _struck(fault)
    pid = ha.kill_postgres(proc)
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
    _struck(fault)
    ha.kill_node(proc)
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
    _rejoin(fault, fault.target, 120, log_from=fault.log_from)


def judge(report: ChaosReport, load: LoadResult, t0: float, t1: float) -> bool:
    """Reads never fail; writes fail fast with 503 and are back within ttl + 5 s."""
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
    not_fast = not_503 + ([] if len(slow) <= SLOW_503_ALLOWANCE * len(failed) else slow)
    struck = report.fault_monotonic or t0
    back = sorted(s.started + s.latency for s in load.samples
                  if s.method == "POST" and 200 <= s.status < 300 and s.started >= struck)
    report.first_write_seconds = back[0] - struck if back else None
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
