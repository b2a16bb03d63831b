"""PgBouncer in front of a PostgreSQL primary, for the local cluster.

Owns the ``pgbouncer.ini`` and user list of one PgBouncer per replication group, its
command line, a readiness probe and a reader of the admin console (``SHOW POOLS``).
It must not decide *whether* PgBouncer runs (the topology's ``[pgbouncer]`` table and
:class:`~djscale.cluster.local.LocalCluster` do) nor touch Django settings
(:mod:`djscale.settings` points ``DATABASES`` at it).

Why a wildcard database: ``* = host=... port=...`` forwards every database name to the
primary, so the application database, ``postgres`` (used by Django to create test
databases) and any later database all pass through without editing the config.

Authentication mirrors the local cluster's PostgreSQL (trust on a private address):
PgBouncer's ``trust`` still needs the user in ``auth_file``, so the group's user is
listed with an empty password. In production (Kubernetes) the CloudNativePG ``Pooler``
authenticates with ``auth_query`` instead; see ``docs/pgbouncer.md``.

PgBouncer refuses to run as root: like PostgreSQL it runs as the ``postgres`` user, with
its config under the PostgreSQL home folder that user can read.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from djscale.cluster.postgres import pg_user
from djscale.cluster.supervisor import ManagedProcess
from djscale.errors import ClusterError
from djscale.topology import PgBouncerSpec

__all__ = ["PoolStats", "pgbouncer_binary", "pgbouncer_process", "pools", "ready",
           "write_config"]


def pgbouncer_binary() -> str:
    """Path of the ``pgbouncer`` executable (ClusterError saying how to install it)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)
    if found is None:
        raise ClusterError("pgbouncer is not installed: `apt-get install pgbouncer` "
                           "(make setup), or set [pgbouncer] enabled = false")
    return found


def write_config(run_dir: Path, *, spec: PgBouncerSpec, host: str, port: int,
                 server_host: str, server_port: int, user: str) -> Path:
    """Write ``pgbouncer.ini`` and ``userlist.txt`` under ``run_dir``; return the ini."""
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o755)
    userlist = run_dir / "userlist.txt"
    userlist.write_text(f'"{user}" ""\n', encoding="utf-8")
    ini = run_dir / "pgbouncer.ini"
    ini.write_text(
        "; written by djscale (djscale.cluster.pgbouncer) - edits are overwritten\n"
        "[databases]\n"
        f"* = host={server_host} port={server_port}\n"
        "\n[pgbouncer]\n"
        f"listen_addr = {host}\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {userlist}\n"
        f"admin_users = {user}\n"
        f"stats_users = {user}\n"
        f"pool_mode = {spec.pool_mode}\n"
        f"default_pool_size = {spec.default_pool_size}\n"
        f"max_client_conn = {spec.max_client_conn}\n"
        # psycopg/libpq may send it; PgBouncer would otherwise refuse the connection.
        "ignore_startup_parameters = extra_float_digits\n"
        # Session mode hands a server connection to the next client: reset it first.
        "server_reset_query = DISCARD ALL\n"
        "server_check_delay = 10\n"
        "listen_backlog = 4096\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "log_pooler_errors = 1\n",
        encoding="utf-8",
    )
    for path in (ini, userlist):
        os.chmod(path, 0o644)
    owner = pg_user()
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (run_dir, ini, userlist):
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
    return ini


def pgbouncer_process(name: str, *, ini: Path, host: str, port: int, log: Path,
                      group: str) -> ManagedProcess:
    """Describe the ``pgbouncer`` process for a config written by :func:`write_config`."""
    return ManagedProcess(
        name=name, kind="pgbouncer", role="pooler", group=group, host=host, port=port,
        cmd=[pgbouncer_binary(), str(ini)], log=str(log), cwd="/tmp", user=pg_user(),
        # SIGTERM: immediate shutdown (SIGINT would wait for every client to leave).
        stop_signal=signal.SIGTERM, data_dir=str(ini.parent),
    )


def ready(host: str, port: int, user: str, database: str) -> bool:
    """Return True if a query through PgBouncer reaches the database behind it."""
    with psycopg.connect(host=host, port=port, user=user, dbname=database,
                         connect_timeout=1, autocommit=True) as conn:
        conn.execute("SELECT 1")
    return True


@dataclass(frozen=True)
class PoolStats:
    """One row of PgBouncer's ``SHOW POOLS`` (one database/user pair)."""

    database: str
    user: str
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    pool_mode: str

    @property
    def clients(self) -> int:
        """Client connections of this pool (active + waiting)."""
        return self.clients_active + self.clients_waiting

    @property
    def servers(self) -> int:
        """Server connections PgBouncer holds to PostgreSQL for this pool."""
        return self.servers_active + self.servers_idle


def pools(host: str, port: int, user: str) -> list[PoolStats]:
    """Read ``SHOW POOLS`` from PgBouncer's admin console."""
    # The admin console speaks the simple query protocol only.
    with psycopg.connect(host=host, port=port, user=user, dbname="pgbouncer",
                         connect_timeout=2, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SHOW POOLS")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        rows: list[dict[str, Any]] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return [
        PoolStats(database=str(r["database"]), user=str(r["user"]),
                  clients_active=int(r["cl_active"]), clients_waiting=int(r["cl_waiting"]),
                  servers_active=int(r["sv_active"]), servers_idle=int(r["sv_idle"]),
                  pool_mode=str(r.get("pool_mode", "")))
        for r in rows
    ]
