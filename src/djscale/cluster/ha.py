"""Replication groups run by Patroni + etcd in the local cluster (``[postgres] ha = "patroni"``).

Places the processes of :mod:`djscale.cluster.patroni` in a :class:`~.local.LocalCluster`:
one etcd member (three, on the first three ``[hosts]``, in a multi-host topology) and one
Patroni per PostgreSQL node of each such group. The nodes keep the service names of a
plain group (``pg-default``, ``pg-default-replica1``, ...) and their ports, so fixed ports
of the topology still apply; what changes is that their role is Patroni's to decide: any
of them may lead. :func:`leader_address` is where the group's primary is *now*.

Owns the ``cluster status`` line of a member (role, timeline, lag, from Patroni's
``/cluster``). Must not elect, promote or rewind anything: Patroni does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from typing import TYPE_CHECKING

from djscale.cluster import patroni, ports
from djscale.cluster import postgres as pg
from djscale.cluster.supervisor import ManagedProcess, pid_alive, wait_until
from djscale.errors import ClusterError
from djscale.topology import AUTO, DatabaseGroup, Port, Topology

if TYPE_CHECKING:
    from djscale.cluster.local import LocalCluster

__all__ = ["KINDS", "etcd_names", "kill_node", "kill_postgres", "leader_address", "members",
           "probe", "ready", "stop_leftover", "up_etcd", "up_group", "uses_patroni", "view",
           "wait_rejoined"]

KINDS = frozenset({"patroni", "etcd"})
"""Service kinds this module starts and probes."""


def uses_patroni(topology: Topology) -> bool:
    """True if some replication group of ``topology`` is run by Patroni."""
    return any(g.ha == "patroni" for g in topology.database_groups)


def etcd_names(topology: Topology) -> list[tuple[str, str]]:
    """``(service name, host)`` of each etcd member: one, or three over ``[hosts]``."""
    if not topology.hosts:
        return [("etcd-1", topology.postgres.host)]
    addresses = [h.address for h in topology.hosts]
    return [(f"etcd-{i + 1}", addresses[i % len(addresses)]) for i in range(3)]


def members(group: DatabaseGroup) -> list[tuple[str, str, Port]]:
    """``(service name, host, configured port)`` of each PostgreSQL node of ``group``."""
    found: list[tuple[str, str, Port]] = [(f"pg-{group.name}", group.host, group.port)]
    for i, alias in enumerate(group.replica_aliases):
        configured = group.replica_ports[i] if i < len(group.replica_ports) else AUTO
        found.append((f"pg-{alias.replace('_', '-')}", group.replica_host(i), configured))
    return found


def _second_port(cluster: LocalCluster, name: str, host: str, key: str) -> int:
    """A further port of service ``name`` (etcd's peer port, Patroni's REST API).

    Kept in the service's record (``extra[key]``) so a restart reuses it; leased until
    the service listens, like the service's own port.
    """
    recorded = (cluster.state.services.get(name) or {}).get("extra", {}).get(key)
    label = f"{name}-{key}"
    if recorded:
        cluster._hold(label, ports.claim(int(recorded), host, label=label))
        return int(recorded)
    probe_host = "127.0.0.1" if cluster.topology.netns_of(host) else host
    lease = ports.reserve(probe_host, label=label)
    cluster._hold(label, lease)
    return lease.port


def up_etcd(cluster: LocalCluster) -> None:
    """Start the etcd member(s) and wait until they serve (all at once: a quorum)."""
    names = etcd_names(cluster.topology)
    placed = []
    for name, host in names:
        client = cluster._port(name, host, AUTO)
        peer = _second_port(cluster, name, host, "peer_port")
        placed.append((name, host, client, peer))
    initial = ",".join(f"{n}=http://{patroni._bracket(h)}:{peer}" for n, h, _, peer in placed)
    token = "djscale-" + hashlib.sha1(str(cluster.state_dir).encode()).hexdigest()[:12]
    procs = []
    for name, host, client, peer in placed:
        proc = patroni.etcd_process(
            name, host=host, client_port=client, peer_port=peer,
            data_dir=cluster.state_dir / "etcd" / name, log=cluster._log(name),
            initial_cluster=initial, token=token)
        # Started one after the other without waiting: three members serve only once a
        # quorum of them runs.
        cluster._ensure(proc, lambda: True, 10)
        procs.append(proc)
    for proc in procs:
        proc.wait_ready(lambda p=proc: patroni.etcd_ready(p.host, p.port), 30)  # type: ignore[misc]
        cluster._release(f"{proc.name}-peer_port")


def up_group(cluster: LocalCluster, group: DatabaseGroup) -> None:
    """Start one Patroni per node of ``group``; wait for a leader and the replicas.

    The first node starts first, so that on a fresh cluster it bootstraps (initdb) and
    the others clone it; on a restart Patroni picks the leader from what the nodes hold.
    """
    etcd = [cluster.address(name) for name, _ in etcd_names(cluster.topology)]
    home = pg.pg_home(cluster.state_dir)
    for name, host, configured in members(group):
        port = cluster._port(name, host, configured)
        api_port = _second_port(cluster, name, host, "api_port")
        folder = home / f"patroni-{name}"
        pg._own(folder)
        config = patroni.write_config(folder / "patroni.yml", group=group, name=name,
                                      host=host, port=port, api_port=api_port,
                                      data_dir=folder / "data", etcd=etcd)
        proc = patroni.patroni_process(name, config=config, host=host, port=port,
                                       api_port=api_port, log=cluster._log(name),
                                       group=group.name, data_dir=folder / "data")
        proc.extra.update(database=group.database, user=group.user)
        try:
            # Cloning a replica copies the whole database: give it time.
            cluster._ensure(proc, lambda p=proc: probe(p)[0], 180)  # type: ignore[misc]
        finally:
            cluster._release(f"{name}-api_port")
    host, port = leader_address(cluster, group, timeout=60)
    pg.ensure_database(host, port, group.user, group.database)


def view(cluster: LocalCluster, group: str, timeout: float = 1.0, *,
         avoid: str = "") -> patroni.ClusterView:
    """Patroni's view of ``group``, from the first member whose REST API answers.

    Member ``avoid`` is asked last: one cut off from etcd answers with what it last knew.
    """
    errors = []
    procs = [p for p in cluster.processes() if p.kind == "patroni" and p.group == group]
    for proc in sorted(procs, key=lambda p: p.name == avoid):
        try:
            return patroni.cluster_view(proc.host, int(proc.extra["api_port"]), timeout)
        except (OSError, ClusterError) as exc:
            errors.append(f"{proc.name}: {exc}")
    raise ClusterError(f"no Patroni member of group {group!r} answers: " + "; ".join(errors))


def leader_address(cluster: LocalCluster, group: DatabaseGroup | str, *,
                   timeout: float = 0.0) -> tuple[str, int]:
    """``(host, port)`` of the group's primary now; waits up to ``timeout`` for a leader.

    A group without Patroni has a fixed primary, ``pg-<group>``.
    """
    name = group if isinstance(group, str) else group.name
    spec = next((g for g in cluster.topology.database_groups if g.name == name), None)
    if spec is None or spec.ha != "patroni":
        return cluster.address(f"pg-{name}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            leader = view(cluster, name).leader
        except ClusterError:
            leader = None
        if leader is not None:
            return leader.host, leader.port
        if time.monotonic() >= deadline:
            raise ClusterError(f"group {name!r} has no Patroni leader (an election is under "
                               "way or too few members run); see `djscale cluster status`")
        time.sleep(0.2)


def probe(proc: ManagedProcess) -> tuple[bool, str]:
    """Health and ``cluster status`` detail of an etcd member or a Patroni member."""
    if proc.kind == "etcd":
        return patroni.etcd_ready(proc.host, proc.port), "etcd member"
    found = patroni.cluster_view(proc.host, int(proc.extra["api_port"])).member(proc.name)
    if found is None:
        return False, "not a member yet"
    detail = f"{'leader' if found.leads else found.role}, timeline {found.timeline}"
    if not found.leads:
        detail += f", lag {'?' if found.lag is None else found.lag} B"
    if found.state != "running":
        detail += f" ({found.state})"
    return found.state == "running", detail


def stop_leftover(proc: ManagedProcess, timeout: float = 15.0) -> None:
    """Stop the PostgreSQL a dead Patroni left running (its postmaster is not its child).

    Patroni stops its PostgreSQL when asked to stop; a Patroni that was killed leaves it
    running, and ``cluster down`` must leave nothing running.
    """
    if proc.kind != "patroni" or proc.alive():
        return
    pid = patroni.postmaster_pid(proc.data_dir)
    if pid is None or not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGINT)  # fast shutdown
    if not wait_until(lambda: not pid_alive(pid), timeout):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def kill_node(proc: ManagedProcess) -> None:
    """SIGKILL a member's Patroni and its PostgreSQL at once: the machine is gone."""
    pid = patroni.postmaster_pid(proc.data_dir)
    # Both at once (a machine does not die one process at a time): the postmaster first,
    # its Patroni a moment later would notice and restart it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    proc.kill()
    if pid is not None:
        wait_until(lambda: not pid_alive(pid), 5)


def kill_postgres(proc: ManagedProcess) -> int:
    """SIGKILL the postmaster of a member (Patroni lives on); return its pid."""
    pid = patroni.postmaster_pid(proc.data_dir)
    if pid is None or not pid_alive(pid):
        raise ClusterError(f"{proc.name} runs no PostgreSQL to kill")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5)
    return pid


def ready(proc: ManagedProcess) -> bool:
    """True once a (re)started member serves (the watchdog's readiness check)."""
    if proc.kind == "etcd":
        return patroni.etcd_ready(proc.host, proc.port)
    return patroni.patroni_ready(proc.host, int(proc.extra["api_port"]))


def wait_rejoined(cluster: LocalCluster, group: str, name: str, timeout: float) -> None:
    """Wait until member ``name`` runs as a replica on the leader's timeline."""
    def rejoined() -> bool:
        current = view(cluster, group)
        member, leader = current.member(name), current.leader
        return (member is not None and leader is not None and not member.leads
                and member.state == "running" and member.timeline == leader.timeline)

    if not wait_until(rejoined, timeout, interval=0.2):
        raise ClusterError(f"{name} did not rejoin group {group!r} as a replica within "
                           f"{timeout:.0f} s; see {cluster.process(name).log}")
