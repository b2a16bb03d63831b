"""Patroni and etcd processes of the local cluster, and Patroni's view of a group.

Owns the generated ``patroni.yml`` of each PostgreSQL node (``[postgres] ha = "patroni"``),
the etcd member command lines, and the reading of Patroni's REST API (``/cluster``: the
leader, the timeline, each member's role, state and lag). Patroni, not djscale, decides
who leads, bootstraps the first node (initdb), clones the others (``pg_basebackup``),
promotes a replica when the leader's key expires in etcd, and rewinds a former leader
(``pg_rewind``) so it rejoins as a replica. This module never elects or promotes anything
itself; :mod:`djscale.cluster.ha` places these processes in a :class:`LocalCluster`.

Patroni runs PostgreSQL, which refuses to run as root: Patroni runs as the same
unprivileged user as the plain local cluster's PostgreSQL (:func:`~.postgres.pg_user`),
on a folder under :func:`~.postgres.pg_home` that user owns. The configuration is written
as JSON, which is YAML too: no YAML writer is needed.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from djscale.cluster import postgres as pg
from djscale.cluster.supervisor import ManagedProcess, run
from djscale.errors import ClusterError
from djscale.topology import DatabaseGroup

__all__ = [
    "NAMESPACE",
    "ClusterView",
    "Member",
    "cluster_view",
    "etcd_process",
    "etcd_ready",
    "patroni_process",
    "patroni_ready",
    "postmaster_pid",
    "scope",
    "switchover",
    "write_config",
]

NAMESPACE = "/djscale/"
"""etcd key prefix of every Patroni scope of the local cluster."""

# The plain local cluster's server settings (postgres.SERVER_CONF), as Patroni parameters.
# Two differ on purpose: full_page_writes is on (pg_rewind needs it; Patroni adds
# wal_log_hints) and synchronous_commit is on, so an acknowledged commit is in the WAL the
# kernel holds (fsync stays off: a killed process loses nothing the kernel has) and, in
# synchronous mode, on a standby too.
PARAMETERS: dict[str, Any] = {
    "wal_level": "replica",
    "max_wal_senders": 16,
    "max_replication_slots": 16,
    "wal_keep_size": "256MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "max_connections": 300,
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_log_hints": "on",
    "shared_preload_libraries": "pg_stat_statements",
    "compute_query_id": "on",
    "pg_stat_statements.track": "all",
    # A standby retries a failed WAL source after this (default 5 s): after a failover it
    # must reach the new leader (whose slot Patroni creates a moment later) quickly, or a
    # strict synchronous leader waits that long for a standby before it commits anything.
    "wal_retrieve_retry_interval": "500ms",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}

PG_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host all all ::1/128 trust",
    "host replication all 127.0.0.1/32 trust",
    "host replication all ::1/128 trust",
    # Other hosts of a multi-host rehearsal: only the directly connected subnets, as the
    # plain local cluster does (postgres.init_primary).
    "host all all samenet trust",
    "host replication all samenet trust",
]


def scope(group: DatabaseGroup) -> str:
    """Patroni's ``scope`` (cluster name in etcd) of a replication group."""
    return f"djscale-{group.name}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def write_config(path: Path, *, group: DatabaseGroup, name: str, host: str, port: int,
                 api_port: int, data_dir: Path, etcd: list[tuple[str, int]]) -> Path:
    """Write the ``patroni.yml`` of member ``name`` of ``group`` and return its path."""
    dcs: dict[str, Any] = {
        "ttl": group.ha_ttl,
        "loop_wait": group.ha_loop_wait,
        "retry_timeout": group.ha_retry_timeout,
        "maximum_lag_on_failover": group.maximum_lag_on_failover,
        "synchronous_mode": group.synchronous,
        "synchronous_mode_strict": group.synchronous,
        "postgresql": {"use_pg_rewind": True, "use_slots": True,
                       "parameters": dict(PARAMETERS)},
    }
    user = {"username": group.user}
    config: dict[str, Any] = {
        "scope": scope(group),
        "namespace": NAMESPACE,
        "name": name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"{_bracket(host)}:{api_port}",
                    "connect_address": f"{_bracket(host)}:{api_port}"},
        "etcd3": {"hosts": [f"{_bracket(h)}:{p}" for h, p in etcd]},
        "bootstrap": {
            "dcs": dcs,
            "initdb": [{"encoding": "UTF8"}, "no-locale", "no-sync"],
        },
        "postgresql": {
            "listen": f"{_bracket(host)}:{port}",
            "connect_address": f"{_bracket(host)}:{port}",
            "data_dir": str(data_dir),
            "bin_dir": str(pg.PG_BIN),
            "pgpass": str(path.parent / "pgpass"),
            "authentication": {"superuser": user, "replication": user, "rewind": user},
            "pg_hba": PG_HBA,
            "parameters": {"unix_socket_directories": ""},
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def patroni_process(name: str, *, config: Path, host: str, port: int, api_port: int,
                    log: Path, group: str, data_dir: Path) -> ManagedProcess:
    """Describe the Patroni daemon of one PostgreSQL node (not yet started).

    ``host``/``port`` are its PostgreSQL's address (what the app connects to); the REST
    API's port is ``extra["api_port"]``. Patroni stops its PostgreSQL on SIGTERM.
    """
    return ManagedProcess(
        name=name, kind="patroni", role="member", group=group, host=host, port=port,
        cmd=["patroni", str(config)], log=str(log), cwd="/tmp", user=pg.pg_user(),
        stop_signal=signal.SIGTERM, data_dir=str(data_dir),
        extra={"api_port": api_port, "config": str(config)},
    )


def etcd_process(name: str, *, host: str, client_port: int, peer_port: int, data_dir: Path,
                 log: Path, initial_cluster: str, token: str) -> ManagedProcess:
    """Describe one etcd member (``initial_cluster``: ``name=http://host:peer,...``)."""
    client = f"http://{_bracket(host)}:{client_port}"
    peer = f"http://{_bracket(host)}:{peer_port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    return ManagedProcess(
        name=name, kind="etcd", role="dcs", host=host, port=client_port,
        cmd=["etcd", "--name", name, "--data-dir", str(data_dir),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", token, "--log-level", "warn"],
        log=str(log), stop_signal=signal.SIGTERM, data_dir=str(data_dir),
        extra={"peer_port": peer_port},
    )


def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, Any]:
    url = f"http://{_bracket(host)}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # Patroni answers 503 with a JSON body too
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, None


def etcd_ready(host: str, port: int) -> bool:
    """Return True once etcd answers ``/health`` as healthy."""
    status, body = _get(host, port, "/health", 1.0)
    return status == 200 and isinstance(body, dict) and body.get("health") == "true"


def patroni_ready(host: str, api_port: int, *, role: str = "") -> bool:
    """Return True once the member's PostgreSQL runs (as ``role``: leader/replica, if given)."""
    path = {"leader": "/leader", "replica": "/replica"}.get(role, "/health")
    status, _ = _get(host, api_port, path, 1.0)
    return status == 200


@dataclass(frozen=True)
class Member:
    """One member of a Patroni cluster, as its ``/cluster`` endpoint reports it."""

    name: str
    role: str
    """``leader``, ``sync_standby`` or ``replica`` (Patroni's words)."""
    state: str
    """``running``, ``starting``, ``stopped``, ``creating replica``, ..."""
    host: str
    port: int
    timeline: int | None
    lag: int | None
    """Bytes behind the leader (None for the leader, or unknown)."""

    @property
    def leads(self) -> bool:
        """True for the member that holds the leader key and runs as primary."""
        return self.role in ("leader", "master", "standby_leader")


@dataclass(frozen=True)
class ClusterView:
    """Patroni's view of one replication group."""

    members: tuple[Member, ...]

    @property
    def leader(self) -> Member | None:
        """The leading member, or None during an election."""
        return next((m for m in self.members if m.leads and m.state == "running"), None)

    @property
    def timeline(self) -> int | None:
        """The leader's timeline (it grows by one with each promotion)."""
        leader = self.leader
        return leader.timeline if leader is not None else None

    def member(self, name: str) -> Member | None:
        """The member called ``name``, if Patroni lists it."""
        return next((m for m in self.members if m.name == name), None)


def cluster_view(host: str, api_port: int, timeout: float = 1.0) -> ClusterView:
    """Ask one member's REST API for the whole group (raises OSError when it is down)."""
    status, body = _get(host, api_port, "/cluster", timeout)
    if status != 200 or not isinstance(body, dict):
        raise ClusterError(f"Patroni at {host}:{api_port} answered /cluster with {status}")
    members = []
    for raw in body.get("members", []):
        lag = raw.get("lag")
        members.append(Member(
            name=str(raw.get("name", "")), role=str(raw.get("role", "")),
            state=str(raw.get("state", "")), host=str(raw.get("host", "")),
            port=int(raw.get("port") or 0),
            timeline=int(raw["timeline"]) if raw.get("timeline") is not None else None,
            lag=lag if isinstance(lag, int) else None))
    return ClusterView(tuple(members))


def postmaster_pid(data_dir: str | Path) -> int | None:
    """The pid in a data folder's ``postmaster.pid`` (None when PostgreSQL is not running)."""
    try:
        first = (Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def switchover(config: str | Path, *, leader: str, candidate: str, group: DatabaseGroup,
               log: Path) -> None:
    """A planned switchover from ``leader`` to ``candidate`` (``patronictl switchover``)."""
    run(["patronictl", "-c", str(config), "switchover", scope(group), "--leader", leader,
         "--candidate", candidate, "--force"], service="patronictl", log=log, timeout=60)
