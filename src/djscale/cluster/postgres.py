"""PostgreSQL 15 primaries and streaming replicas for the local cluster.

Owns initdb, the server configuration, ``pg_basebackup -R`` replicas with replication
slots, and readiness/lag probes (the lag itself is :mod:`djscale.db.lag`'s measure).
PostgreSQL refuses to run as root, so when djscale runs as root every PostgreSQL command
runs as the ``postgres`` user (Debian's package creates it) on a data folder that user
owns. That user cannot enter ``/root``; when the state folder is not reachable by it,
data lives under ``/tmp/djscale-pg-<hash>`` and the state folder holds a symlink to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from djscale.cluster.supervisor import ManagedProcess, run
from djscale.db import lag
from djscale.errors import ClusterError

log = logging.getLogger("djscale.cluster")

__all__ = [
    "PG_BIN",
    "connect",
    "ensure_database",
    "init_primary",
    "init_replica",
    "pg_home",
    "pg_process",
    "pg_user",
    "replica_status",
]

PG_BIN = Path(os.environ.get("DJSCALE_PG_BIN", "/usr/lib/postgresql/15/bin"))

# Settings for a disposable local cluster: durability is traded for speed (no fsync),
# replication and pg_stat_statements are on so routing can be proven from the server side.
SERVER_CONF = """
# --- djscale local cluster ---
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
max_connections = 300
shared_buffers = '64MB'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_preload_libraries = 'pg_stat_statements'
compute_query_id = on
pg_stat_statements.track = all
unix_socket_directories = ''
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""


def pg_user() -> str | None:
    """The unprivileged user PostgreSQL runs as, or None to run as the current user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root but there is no 'postgres' user to run PostgreSQL as; "
            "install postgresql-15 (make setup) or run as an unprivileged user"
        ) from None
    return "postgres"


def reachable_by_others(path: Path) -> bool:
    """True when every folder up to ``path`` lets other users pass (service accounts)."""
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            return False
    return True


def pg_home(state_dir: Path) -> Path:
    """Folder holding the PostgreSQL data folders of the cluster under ``state_dir``."""
    link = state_dir / "postgres"
    if link.is_symlink() or link.is_dir():
        return link.resolve()
    if pg_user() is None or reachable_by_others(state_dir):
        link.mkdir(parents=True, exist_ok=True)
        return link
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
    home = Path("/tmp") / f"djscale-pg-{digest}"
    if home.exists():
        _set_aside(home)
    home.mkdir(mode=0o755, parents=True)
    link.symlink_to(home)
    return home


def _set_aside(home: Path) -> None:
    """Move away the data folders of an earlier cluster whose state folder had this path.

    The state folder is gone (deleted without ``djscale cluster down --purge``, which
    removes its data too), so the cluster starting there now records none of it: adopted,
    its primary would keep the old rows and its replicas would follow the old primary's
    port, never stream, and every read would go to the primary. Kept, not deleted: it is
    somebody's data.
    """
    aside = home.with_name(f"{home.name}-orphan-{time.strftime('%Y%m%d-%H%M%S')}")
    home.rename(aside)
    log.warning("%s held the PostgreSQL data of an earlier cluster whose state folder is "
                "gone; moved to %s (delete it when it is not needed)", home, aside)


def _own(path: Path) -> None:
    user = pg_user()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def init_primary(name: str, data_dir: Path, superuser: str, log: Path) -> None:
    """Create a primary's data folder with initdb (no-op when it already exists)."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a half-made folder from a failed attempt
    _own(data_dir)
    run([str(PG_BIN / "initdb"), "-D", str(data_dir), "-U", superuser, "--auth=trust",
         "--no-locale", "-E", "UTF8", "--no-sync"],
        service=name, log=log, user=pg_user(), cwd="/tmp")
    with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as fh:
        fh.write(SERVER_CONF)
    with open(data_dir / "pg_hba.conf", "a", encoding="utf-8") as fh:
        # Hosts other than loopback (multi-host topologies on private networks): trust is
        # for local clusters only, and only from the subnets this server is directly
        # connected to (``samenet``), never from anywhere.
        fh.write("\nhost all all samenet trust\nhost replication all samenet trust\n")


def init_replica(name: str, data_dir: Path, primary_host: str, primary_port: int,
                 superuser: str, slot: str, log: Path) -> None:
    """Clone a replica with ``pg_basebackup -R`` (no-op when its data folder exists)."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)
    with connect(primary_host, primary_port, superuser, "postgres") as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active", (slot,)
        )
    _own(data_dir)
    run([str(PG_BIN / "pg_basebackup"), "-h", primary_host, "-p", str(primary_port),
         "-U", superuser, "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast",
         "-C", "-S", slot, "--no-sync"],
        service=name, log=log, user=pg_user(), cwd="/tmp")


def pg_process(name: str, *, data_dir: Path, host: str, port: int, log: Path, role: str,
               group: str) -> ManagedProcess:
    """Describe the ``postgres`` server process for a data folder (not yet started)."""
    return ManagedProcess(
        name=name, kind="postgres", role=role, group=group, host=host, port=port,
        cmd=[str(PG_BIN / "postgres"), "-D", str(data_dir), "-p", str(port),
             "-c", f"listen_addresses={host}"],
        log=str(log), cwd="/tmp", user=pg_user(), stop_signal=signal.SIGINT,
        data_dir=str(data_dir),
    )


def connect(host: str, port: int, user: str, dbname: str,
            timeout: float = 2.0) -> psycopg.Connection[Any]:
    """Open an autocommit connection (raises psycopg.OperationalError when down)."""
    return psycopg.connect(host=host, port=port, user=user, dbname=dbname,
                           connect_timeout=max(1, int(timeout)), autocommit=True)


def ensure_database(host: str, port: int, user: str, database: str) -> None:
    """Create ``database`` on a primary when missing."""
    with connect(host, port, user, "postgres") as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    with connect(host, port, user, database) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's state and its lag behind its primary (:mod:`djscale.db.lag`)."""

    in_recovery: bool
    lag_bytes: int | None
    lag_seconds: float | None


def replica_status(host: str, port: int, user: str, database: str, *,
                   primary: tuple[str, int] | None = None) -> ReplicaStatus:
    """Probe a standby and measure its lag against ``primary`` (``(host, port)``).

    The lag is djscale's one measure (:func:`djscale.db.lag.measure`), the one the router
    and ``/health/ready`` use; it is None (unknown) without a primary that answers.
    """
    primary_lsn = None
    if primary is not None:
        try:
            with connect(primary[0], primary[1], user, database) as conn:
                primary_lsn = lag.read_primary(conn.cursor())
        except psycopg.Error:
            primary_lsn = None
    with connect(host, port, user, database) as conn:
        position = lag.read_replica(conn.cursor())
    measured = lag.measure(f"{host}:{port}", primary_lsn, position, record=False)
    return ReplicaStatus(in_recovery=position.in_recovery, lag_bytes=measured.lag_bytes,
                         lag_seconds=measured.lag_seconds)
