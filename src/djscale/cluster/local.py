"""The local cluster: the whole topology as real processes on one machine.

:class:`LocalCluster` boots, probes and stops every service of a :class:`Topology` in
dependency order (databases, Redis, migrations, app servers, load balancer, Celery),
keeping their data, logs and configs under a state folder and their addresses in
``cluster.json``. ``up`` is idempotent: running services are kept, stopped ones are
restarted on the same ports and data. The CLI (``djscale cluster``), the pytest fixtures
(:mod:`djscale.testing`), the demo and the benchmarks all use this class.

Every service binds to the address of the host the topology places it on (loopback
unless ``[hosts]`` says otherwise); a service on a host with a ``netns`` runs inside that
network namespace, and is probed from here over the network like any remote machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from djscale.cluster import ha, ports, varnish
from djscale.cluster import pgbouncer as pgb
from djscale.cluster import postgres as pg
from djscale.cluster import redis as rd
from djscale.cluster.lb import Upstream, lb_process
from djscale.cluster.packages import require_packages
from djscale.cluster.state import ClusterState
from djscale.cluster.supervisor import NETNS_DIR, ManagedProcess, run, wait_until
from djscale.errors import ClusterError
from djscale.topology import AUTO, DatabaseGroup, Port, Topology

__all__ = ["PARTS", "RESTARTED_KINDS", "LocalCluster", "ServiceStatus", "service_ready"]

PARTS = ("postgres", "pgbouncer", "redis", "migrate", "app", "lb", "edge", "celery",
         "gateway", "dashboard", "watchdog")
"""The parts of a cluster, in start order; ``up(only=...)`` takes a subset."""

RESTARTED_KINDS = frozenset({"gunicorn", "celery", "relay", "gateway", "nginx", "haproxy",
                             "dashboard", "patroni", "etcd", "varnish"})
"""Kinds of service the watchdog restarts when they die: the stateless ones.

PostgreSQL, PgBouncer and Redis are left alone: restarting a crashed primary behind the
back of a failover manager (Patroni) would fight it (Patroni itself, like etcd, is
restarted, as systemd would: it then rejoins its group as Patroni decides), a Redis
Cluster master that died has been replaced by its replica, and the chaos scenarios that
stop them restart them on
purpose. (:mod:`djscale.cluster.watchdog`.)"""


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``djscale cluster status``."""

    name: str
    kind: str
    pid: int
    address: str
    running: bool
    healthy: bool
    detail: str = ""
    restarts: int = 0
    """Restarts by the watchdog since the service was started by ``up``/``start``."""
    supervision: str = ""
    """The watchdog's view: running, backoff, starting, crash-loop, stopped ('' = none)."""
    last_exit: str = ""
    """How the service last died (``killed by SIGKILL``, ``exit status 3``), if it did."""


def http_ok(host: str, port: int, path: str = "/health/live", timeout: float = 1.0) -> bool:
    """Return True if an HTTP GET of ``path`` answers with a status below 500."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        return conn.getresponse().status < 500
    finally:
        conn.close()


class LocalCluster:
    """Boot and manage the services of ``topology`` under ``state_dir``."""

    def __init__(self, topology: Topology, state_dir: str | Path) -> None:
        self.topology = topology
        self.state_dir = Path(state_dir).absolute()
        self.state = ClusterState.read(self.state_dir)
        self.state.topology = topology.source
        self.log_dir = self.state_dir / "logs"
        self._leases: dict[str, ports.PortLease] = {}

    # ------------------------------------------------------------------ helpers

    def process(self, name: str) -> ManagedProcess:
        """The recorded process of service ``name`` (KeyError when unknown)."""
        self._reload()
        return ManagedProcess.from_record(self.state.services[name])

    def processes(self) -> list[ManagedProcess]:
        """All recorded processes, in start order."""
        self._reload()
        return [ManagedProcess.from_record(r) for r in self.state.services.values()]

    def _reload(self) -> None:
        # The watchdog records the pid of every service it restarts: read it back.
        self.state.services = ClusterState.read(self.state_dir).services

    def address(self, name: str) -> tuple[str, int]:
        """``(host, port)`` of a service of this cluster."""
        address = self.state.address(name)
        if address is None:
            raise ClusterError(f"service {name!r} is not part of this cluster")
        return address

    def _port(self, name: str, host: str, configured: Port,
              companions: tuple[int, ...] = ()) -> int:
        """The port of service ``name``, leased (:mod:`djscale.cluster.ports`) until it is up.

        ``companions``: offsets of further ports the service binds (a Redis Cluster node's
        bus port), leased and checked with it.
        """
        recorded = self.state.address(name)
        fixed = recorded[1] if recorded is not None else (
            int(configured) if configured != AUTO else 0)
        if fixed:
            # Hold the port while the service (re)starts on it, so no allocator hands it
            # out meanwhile; another owner's lease means a collision we cannot prevent.
            self._hold(name, ports.claim(fixed, host, companions=companions, label=name))
            return fixed
        # A namespace's addresses cannot be bound here; its ports are leased all the same.
        probe_host = "127.0.0.1" if self.topology.netns_of(host) else host
        try:
            lease = ports.reserve(probe_host, companions=companions, label=name)
        except OSError as exc:
            raise ClusterError(
                f"{name} is placed on {host}, which this machine cannot listen on "
                f"({exc.strerror or exc}): run it on that machine, or give its [hosts] entry "
                "a netns to rehearse it here") from None
        self._hold(name, lease)
        return lease.port

    def _hold(self, name: str, lease: ports.PortLease | None) -> None:
        previous = self._leases.pop(name, None)
        if previous is not None:
            previous.release()
        if lease is not None:
            self._leases[name] = lease

    def _release(self, name: str | None = None) -> None:
        """End the port lease of ``name`` (every lease when None): its service owns them."""
        for key in [name] if name is not None else list(self._leases):
            lease = self._leases.pop(key, None) if key is not None else None
            if lease is not None:
                lease.release()

    def _record(self, proc: ManagedProcess, **supervision: Any) -> None:
        """Store ``proc``'s record, keeping (and updating) what the watchdog noted in it."""
        with ClusterState.transaction(self.state_dir) as state:
            old = state.services.get(proc.name, {}).get("supervision") or {}
            proc.supervision = {**old, **supervision}
            state.topology = self.state.topology or state.topology
            state.services[proc.name] = proc.to_record()
        self.state.services = state.services

    def _supervise(self, name: str, **supervision: Any) -> None:
        """Update the watchdog's notes of service ``name`` (e.g. ``state="stopped"``)."""
        with ClusterState.transaction(self.state_dir) as state:
            record = state.services[name]
            record["supervision"] = {**(record.get("supervision") or {}), **supervision}
        self.state.services = state.services

    def supervised(self, name: str) -> bool:
        """Return True if a running watchdog restarts service ``name`` when it dies."""
        self._reload()
        watchdog = self.state.services.get("watchdog")
        record = self.state.services.get(name) or {}
        return bool(record.get("restart") and watchdog
                    and ManagedProcess.from_record(watchdog).alive())

    def _log(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def _ensure(self, proc: ManagedProcess, probe: Callable[[], bool], timeout: float) -> None:
        """Start ``proc`` unless its recorded twin is already running, then wait for it."""
        proc.netns = self.topology.netns_of(proc.host)
        proc.restart = proc.kind in RESTARTED_KINDS
        if proc.netns and not Path(NETNS_DIR, proc.netns).exists():
            host = self.topology.host_at(proc.host)
            raise ClusterError(
                f"{proc.name} runs on host {host.name if host else proc.host!r} whose network "
                f"namespace {proc.netns!r} does not exist: create it first "
                "(djscale.testing.netns) or remove its netns from [hosts]")
        previous = self.state.services.get(proc.name)
        if previous and previous.get("pid"):
            running = ManagedProcess.from_record(previous)
            if running.alive():
                # Already up: keep it, and check it the way `status` does.
                proc.pid = running.pid
                self._release(proc.name)
                self._record(proc, state="running")
                proc.wait_ready(lambda: self._probe(proc)[0], timeout)
                return
        try:
            proc.start()
            # Started by hand: a crash loop the watchdog gave up on starts afresh.
            self._record(proc, state="running", recent=[])
            proc.wait_ready(probe, timeout)
        finally:
            self._release(proc.name)

    def env(self, service: str = "") -> dict[str, str]:
        """Environment for Django processes (app servers, Celery, migrations)."""
        base = Path(self.topology.source).parent if self.topology.source != "<memory>" \
            else Path.cwd()
        pythonpath = (base / self.topology.project.pythonpath).resolve()
        paths = [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH", "")])]
        return {
            "DJANGO_SETTINGS_MODULE": self.topology.project.settings,
            "DJSCALE_TOPOLOGY": str(Path(self.topology.source).absolute()),
            "DJSCALE_STATE_DIR": str(self.state_dir),
            "DJSCALE_SERVICE": service,
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONUNBUFFERED": "1",  # logs reach the log file as they are written
        }

    # ------------------------------------------------------------------ up

    def up(self, only: Iterable[str] = PARTS) -> None:
        """Start every service (or the parts in ``only``) and wait until each is ready."""
        parts = set(only)
        unknown = parts - set(PARTS)
        if unknown:
            raise ClusterError(f"unknown cluster part(s) {sorted(unknown)}; "
                               f"choose from {', '.join(PARTS)}")
        require_packages(self.topology, parts)  # before anything starts
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._reload()
        try:
            self._up_parts(parts)
        finally:
            self._release()

    def _up_parts(self, parts: set[str]) -> None:
        if "postgres" in parts:
            if ha.uses_patroni(self.topology):
                ha.up_etcd(self)
            for group in self.topology.database_groups:
                if group.ha == "patroni":
                    ha.up_group(self, group)  # Patroni runs the nodes (djscale.cluster.ha)
                else:
                    self._up_group(group)
        if "pgbouncer" in parts and self.topology.pgbouncer.enabled:
            for group in self.topology.database_groups:
                self._up_pgbouncer(group)
        if "redis" in parts:
            self._up_redis()
        if "migrate" in parts:
            self.migrate()
        if "app" in parts:
            self._up_apps()
        if "lb" in parts:
            self._up_lb()
        if "edge" in parts and self.topology.edge.enabled:
            self._up_edge()
        if "celery" in parts:
            self._up_celery()
        if "gateway" in parts and (self.topology.gateway.routes
                                   or self.topology.gateway.compositions):
            self._up_gateway()
        if "dashboard" in parts:
            self._up_dashboard()
        if "watchdog" in parts:
            self._up_watchdog()

    def _up_group(self, group: DatabaseGroup) -> None:
        home = pg.pg_home(self.state_dir)
        name = f"pg-{group.name}"
        port = self._port(name, group.host, group.port)
        data = home / group.name
        log = self._log(name)
        pg.init_primary(name, data, group.user, log)
        primary = pg.pg_process(name, data_dir=data, host=group.host, port=port, log=log,
                                role="primary", group=group.name)
        primary.extra = {"database": group.database, "user": group.user}
        self._ensure(primary, lambda: _pg_ready(group.host, port, group.user), 60)
        pg.ensure_database(group.host, port, group.user, group.database)
        for i, alias in enumerate(group.replica_aliases):
            rname = f"pg-{alias.replace('_', '-')}"
            configured = group.replica_ports[i] if i < len(group.replica_ports) else AUTO
            rhost = group.replica_host(i)
            rport = self._port(rname, rhost, configured)
            rdata = home / alias
            rlog = self._log(rname)
            pg.init_replica(rname, rdata, group.host, port, group.user, alias, rlog)
            replica = pg.pg_process(rname, data_dir=rdata, host=rhost, port=rport,
                                    log=rlog, role="replica", group=group.name)
            replica.extra = {"database": group.database, "user": group.user, "alias": alias}
            self._ensure(replica, lambda h=rhost, p=rport: _replica_ready(  # type: ignore[misc]
                h, p, group.user, group.database), 60)

    def _up_pgbouncer(self, group: DatabaseGroup) -> None:
        """PgBouncer in front of the group's primary (``[pgbouncer] enabled = true``)."""
        spec = self.topology.pgbouncer
        name = f"pgbouncer-{group.name}"
        port = self._port(name, group.host,
                          spec.port if group is self.topology.postgres else AUTO)
        server_host, server_port = self.address(f"pg-{group.name}")
        ini = pgb.write_config(pg.pg_home(self.state_dir) / name, spec=spec, host=group.host,
                               port=port, server_host=server_host, server_port=server_port,
                               user=group.user)
        proc = pgb.pgbouncer_process(name, ini=ini, host=group.host, port=port,
                                     log=self._log(name), group=group.name)
        proc.extra = {"database": group.database, "user": group.user}
        self._ensure(proc, lambda: pgb.ready(group.host, port, group.user, group.database), 30)

    def _up_redis(self) -> None:
        spec = self.topology.redis
        home = self.state_dir / "redis"
        if spec.mode == "single":
            port = self._port("redis", spec.host, spec.port)
            proc = rd.redis_process("redis", host=spec.host, port=port, data_dir=home / "redis",
                                    log=self._log("redis"), cluster=False, durable=True)
            self._ensure(proc, lambda: rd.ping(spec.host, port), 20)
            return
        nodes = []
        for i in range(1, spec.nodes + 1):
            name = f"redis-{i}"
            configured = spec.port if (i == 1 and spec.port != AUTO) else AUTO
            port = self._port(name, spec.host, configured, (ports.REDIS_BUS_OFFSET,))
            node = rd.redis_process(name, host=spec.host, port=port, data_dir=home / name,
                                    log=self._log(name), cluster=True, role="cluster-node")
            self._ensure(node, lambda p=port: rd.ping(spec.host, p), 20)  # type: ignore[misc]
            nodes.append(node)
        rd.create_cluster(nodes, spec.replicas_per_master, self._log("redis-cluster"))
        for node in nodes:
            node.wait_ready(lambda n=node: rd.cluster_ok(n.host, n.port), 30)  # type: ignore[misc]
        if self.topology.celery.workers:
            # Celery cannot use a Redis Cluster as broker: it gets a node of its own.
            port = self._port("redis-broker", spec.host, AUTO)
            proc = rd.redis_process("redis-broker", host=spec.host, port=port,
                                    data_dir=home / "broker", log=self._log("redis-broker"),
                                    cluster=False, role="broker", durable=True)
            self._ensure(proc, lambda: rd.ping(spec.host, port), 20)

    def django_admin(self, *args: str, service: str = "django-admin",
                     timeout: float = 300) -> str:
        """Run ``django-admin`` with the project's settings and this cluster's addresses."""
        env = {**os.environ, **self.env(service)}
        return run([sys.executable, "-m", "django", *args], service=service,
                   log=self._log(service), env=env, timeout=timeout)

    def migrate(self) -> None:
        """Apply migrations on every primary (routers decide what goes where)."""
        for group in self.topology.database_groups:
            self.django_admin("migrate", "--noinput", "--database", group.name,
                              service=f"migrate-{group.name}")

    def _up_apps(self) -> None:
        spec = self.topology.app
        for i in range(spec.servers):
            proc = self.app_process(i)
            self._ensure(proc, lambda p=proc: http_ok(p.host, p.port), 60)  # type: ignore[misc]

    def app_process(self, index: int, topology: Topology | None = None) -> ManagedProcess:
        """App server ``index`` (0-based: ``app-<index+1>``) as ``topology`` describes it.

        Its port is the recorded one, else the configured one, else a leased free one.
        ``topology`` (default: the cluster's) lets a rollout start it with new settings.
        Behind nginx's slots (:meth:`lb_slot_dir`) it listens on a Unix socket as well.
        """
        spec = (topology or self.topology).app
        name = f"app-{index + 1}"
        host = spec.host_of(index)
        port = self._port(name, host, spec.port(index))
        extra: dict[str, Any] = {"weight": spec.weight(index)}
        binds = ["--bind", f"{_bracket(host)}:{port}"]
        slot_dir = self.lb_slot_dir()
        if slot_dir is not None:
            # nginx reaches it through its Unix socket (djscale.cluster.lb, nginx slots).
            sock = str(slot_dir / f"{name}.sock")
            binds += ["--bind", f"unix:{sock}"]
            extra["socket"] = sock
        cmd = [sys.executable, "-m", "gunicorn", self.topology.project.wsgi,
               *binds, "--workers", str(spec.workers),
               "--threads", str(spec.threads), "--timeout", str(spec.timeout),
               "--graceful-timeout", "5", "--name", name,
               "--backlog", "2048", "--access-logfile", "-" if os.environ.get(
                   "DJSCALE_ACCESS_LOG") else "/dev/null"]
        proc = ManagedProcess(name=name, kind="gunicorn", role="app", host=host,
                              port=port, cmd=cmd, log=str(self._log(name)),
                              env=self.env(name), stop_signal=signal.SIGTERM,
                              extra=extra)
        proc.netns = self.topology.netns_of(host)
        proc.restart = True
        return proc

    def app_servers(self) -> list[str]:
        """Names of the app servers recorded now (``app-1``...), in index order.

        Usually ``app.servers`` of them; ``djscale cluster scale`` and the autoscaler
        change the count of a running cluster.
        """
        self._reload()
        names = [n for n, r in self.state.services.items()
                 if r.get("kind") == "gunicorn" and r.get("role") == "app"]
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))

    def upstreams(self) -> list[Upstream]:
        """The app servers as load-balancer upstreams (the recorded ones, once started)."""
        spec = self.topology.app
        names = self.app_servers() or [f"app-{i + 1}" for i in range(spec.servers)]
        ups = []
        for name in names:
            host, port = self.address(name)
            index = int(name.rsplit("-", 1)[1]) - 1
            extra = (self.state.services.get(name) or {}).get("extra") or {}
            ups.append(Upstream(name=name, host=host, port=port, weight=spec.weight(index),
                                socket=str(extra.get("socket", ""))))
        return ups

    def lb_slot_dir(self) -> Path | None:
        """Where nginx's Unix-socket slots live (:mod:`djscale.cluster.lb`), or None.

        For nginx with the load balancer and every app server on loopback addresses and in
        no network namespace (a namespace or another address stands for another machine,
        which a Unix socket would bypass; those keep the TCP upstream and its reload): a
        short folder in /tmp (a socket path has at most 107 bytes), linked from the state
        folder as ``lb-sockets``.
        """
        topo = self.topology
        hosts = {topo.lb.host, topo.app.host, *topo.app.hosts}
        if topo.lb.kind != "nginx" or any(topo.netns_of(h) or not _loopback(h) for h in hosts):
            return None
        link = self.state_dir / "lb-sockets"
        if link.is_symlink():
            home = Path(os.readlink(link))
        else:
            digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:12]
            home = Path("/tmp") / f"djscale-lb-{digest}"
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        home.chmod(0o755)  # nginx's workers (maybe another user) follow the links
        if not link.is_symlink():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                link.symlink_to(home)
        return home

    def lb_slots(self) -> int:
        """Server lines of a HAProxy config: room for the most app servers this may run."""
        from djscale.cluster.lbctl import HAPROXY_SLOTS

        scale = self.topology.app.autoscale
        return max(HAPROXY_SLOTS, self.topology.app.servers, scale.max if scale else 0,
                   len(self.app_servers()))

    def _up_lb(self) -> None:
        spec = self.topology.lb
        port = self._port("lb", spec.host, spec.port)
        proc = lb_process(spec, self.upstreams(), port=port, run_dir=self.state_dir / "lb",
                          log=self._log("lb"), netns=self.topology.netns_of(spec.host),
                          slots=self.lb_slots(), slot_dir=self.lb_slot_dir())
        self._ensure(proc, lambda: http_ok(spec.host, port), 30)

    def _up_edge(self) -> None:
        """Varnish in front of the load balancer (``[edge] kind = "varnish"``)."""
        spec = self.topology.edge
        if shutil.which("varnishd") is None:
            raise ClusterError('[edge] kind = "varnish" needs varnishd: install the Debian '
                               "packages varnish and varnish-modules (`make setup` does)")
        port = self._port("edge", spec.host, spec.port)
        lb_host, lb_port = self.address("lb")
        proc = varnish.varnish_process(spec, backend_host=lb_host, backend_port=lb_port,
                                       port=port, run_dir=varnish.edge_home(self.state_dir),
                                       log=self._log("edge"))
        self._ensure(proc, lambda: service_ready(proc), 30)

    def _up_celery(self) -> None:
        spec = self.topology.celery
        for i in range(spec.workers):
            proc = self.celery_process(i)
            log = Path(proc.log)
            start = log.stat().st_size if log.exists() else 0
            self._ensure(proc, lambda p=proc, s=start: service_ready(p, s), 60)  # type: ignore[misc]
        if spec.relay:
            # The outbox relay (djscale.events) publishes committed events to the broker.
            log = self._log("relay")
            proc = ManagedProcess(name="relay", kind="relay", role="relay",
                                  host=spec.host_of(0),
                                  cmd=[sys.executable, "-m", "django", "events_relay"],
                                  log=str(log), env=self.env("relay"),
                                  stop_signal=signal.SIGTERM)
            start = log.stat().st_size if log.exists() else 0
            self._ensure(proc, lambda: service_ready(proc, start), 60)

    def celery_process(self, index: int, topology: Topology | None = None) -> ManagedProcess:
        """Celery worker ``index`` (0-based: ``celery-<index+1>``) as ``topology`` says.

        SIGTERM is Celery's warm shutdown: the worker takes no new task and finishes the
        ones it runs.
        """
        spec = (topology or self.topology).celery
        name = f"celery-{index + 1}"
        cmd = [sys.executable, "-m", "celery", "-A", spec.app, "worker",
               "--concurrency", str(spec.concurrency), "--hostname", f"{name}@%h",
               "--queues", ",".join(spec.queues), "--loglevel", "INFO",
               "--without-gossip", "--without-mingle"]
        proc = ManagedProcess(name=name, kind="celery", role="worker", cmd=cmd,
                              host=spec.host_of(index), log=str(self._log(name)),
                              env=self.env(name), stop_signal=signal.SIGTERM)
        proc.netns = self.topology.netns_of(proc.host)
        proc.restart = True
        return proc

    def _up_gateway(self) -> None:
        proc = self.gateway_process()
        self._ensure(proc, lambda: http_ok(proc.host, proc.port, "/"), 30)

    def gateway_process(self) -> ManagedProcess:
        """The API gateway (uvicorn) on its recorded or configured port."""
        spec = self.topology.gateway
        port = self._port("gateway", spec.host, spec.port)
        # One worker: measured against two in front of the shop's products service on a
        # machine whose cores the services share (benchmarks/bench_gateway.py, notes of
        # its rows in docs/benchmarks.md), one served more requests in every run.
        # uvicorn with djscale's protocol on a SO_REUSEPORT socket: a rollout starts the
        # new gateway beside the old one on this port (djscale.gateway_server).
        cmd = [sys.executable, "-m", "djscale.gateway_server", "--host", spec.host,
               "--port", str(port)]
        proc = ManagedProcess(name="gateway", kind="gateway", role="gateway", host=spec.host,
                              port=port, cmd=cmd, log=str(self._log("gateway")),
                              env=self.env("gateway"), stop_signal=signal.SIGTERM)
        proc.netns = self.topology.netns_of(spec.host)
        proc.restart = True
        return proc

    def _up_dashboard(self) -> None:
        self._up_state_daemon("dashboard", role="dashboard", ready_path="/health/live")

    def _up_watchdog(self) -> None:
        """The watchdog daemon that restarts crashed services (:mod:`.watchdog`)."""
        self._up_state_daemon("watchdog", role="supervisor", ready_path="/metrics")

    def _up_state_daemon(self, name: str, *, role: str, ready_path: str) -> None:
        """A ``djscale.cluster.<name>`` daemon over the state folder, on a local port."""
        host = "127.0.0.1"
        port = self._port(name, host, AUTO)
        cmd = [sys.executable, "-m", f"djscale.cluster.{name}", "--state-dir",
               str(self.state_dir), "--host", host, "--port", str(port)]
        proc = ManagedProcess(name=name, kind=name, role=role, host=host, port=port, cmd=cmd,
                              log=str(self._log(name)),
                              cwd=os.getcwd(),  # a relative topology path stays valid
                              stop_signal=signal.SIGTERM)
        self._ensure(proc, lambda: http_ok(host, port, ready_path), 30)

    # ------------------------------------------------------------------ status / down

    def status(self) -> list[ServiceStatus]:
        """Probe every recorded service."""
        rows = []
        for proc in self.processes():
            running = proc.alive()
            healthy = False
            detail = ""
            try:
                if running:
                    healthy, detail = self._probe(proc)
            except Exception as exc:  # noqa: BLE001 - a failed probe means "unhealthy"
                detail = type(exc).__name__
            address = f"{proc.host}:{proc.port}" if proc.port else "-"
            sup = proc.supervision
            rows.append(ServiceStatus(
                proc.name, proc.kind, proc.pid if running else 0, address, running, healthy,
                detail, restarts=int(sup.get("restarts", 0)),
                supervision=str(sup.get("state", "")) if proc.restart else "",
                last_exit=str(sup.get("last_exit", ""))))
        return rows

    def _probe(self, proc: ManagedProcess) -> tuple[bool, str]:
        if proc.kind in ha.KINDS:
            return ha.probe(proc)
        if proc.kind == "postgres":
            user, db = proc.extra["user"], proc.extra["database"]
            if proc.role == "replica":
                st = pg.replica_status(proc.host, proc.port, user, db,
                                       primary=self.state.address(f"pg-{proc.group}"))
                lag = "?" if st.lag_seconds is None else f"{st.lag_seconds:.1f}s"
                size = "?" if st.lag_bytes is None else str(st.lag_bytes)
                return st.in_recovery, f"lag {lag} / {size} B"
            return _pg_ready(proc.host, proc.port, user), "primary"
        if proc.kind == "pgbouncer":
            return pgb.ready(proc.host, proc.port, proc.extra["user"],
                             proc.extra["database"]), proc.role
        if proc.kind == "redis":
            return rd.ping(proc.host, proc.port), proc.role
        if proc.kind in ("gunicorn", "nginx", "haproxy", "dashboard", "gateway", "watchdog"):
            return http_ok(proc.host, proc.port), proc.role
        if proc.kind == "varnish":
            ok = service_ready(proc)
            return ok, varnish.edge_stats(proc.data_dir).summary() if ok else proc.role
        return True, proc.role

    def down(self, *, purge: bool = False) -> None:
        """Stop every service (reverse start order); with ``purge`` delete all data too."""
        errors = []
        # The watchdog first, so it restarts nothing that is being stopped; then read the
        # state again: it may have restarted a service just before it stopped.
        ordered = sorted(reversed(self.processes()), key=lambda p: p.kind != "watchdog")
        for proc in ordered:
            if proc.kind == "watchdog":
                errors += self._stop(proc)
                continue
            current = self.process(proc.name)
            errors += self._stop(current)
        if self.state.services and self.state_dir.exists():
            with ClusterState.transaction(self.state_dir) as state:
                for record in state.services.values():
                    record["pid"] = 0
                    if record.get("supervision"):
                        record["supervision"]["state"] = "stopped"
            self.state.services = state.services
        if purge:
            # homes kept in /tmp (pg_home, edge_home, lb_slot_dir)
            for linked in ("postgres", "edge", "lb-sockets"):
                home = self.state_dir / linked
                if home.is_symlink():
                    shutil.rmtree(home.resolve(), ignore_errors=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if errors:
            raise ClusterError("some services did not stop cleanly: " + "; ".join(errors))

    @staticmethod
    def _stop(proc: ManagedProcess) -> list[str]:
        try:
            proc.stop()
            ha.stop_leftover(proc)
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            return [f"{proc.name}: {exc}"]
        return []

    def stop_service(self, name: str, *, crash: bool = False) -> None:
        """Stop one service (``crash``: SIGKILL, as in a machine failure).

        A stop is deliberate: the watchdog leaves the service down until it is started
        again. A crash is not: the watchdog restarts a service of a
        :data:`RESTARTED_KINDS` kind after its back-off.
        """
        proc = self.process(name)
        if crash:
            proc.kill()
        else:
            self._supervise(name, state="stopped")
            proc.stop()

    def start_service(self, name: str, timeout: float = 60) -> None:
        """Start one recorded service again on its port and data, and wait until ready.

        A service that is already running (restarted by the watchdog meanwhile) is only
        waited for; one that the watchdog gave up on (crash loop) starts afresh.
        """
        with ClusterState.transaction(self.state_dir) as state:
            proc = ManagedProcess.from_record(state.services[name])
            if not proc.alive():
                self._hold(name, ports.claim(proc.port, proc.host, label=name)
                           if proc.port else None)
                try:
                    proc.start()
                finally:
                    self._release(name)
            proc.supervision = {**proc.supervision, "state": "running", "recent": []}
            state.services[name] = proc.to_record()
        self.state.services = state.services
        proc.wait_ready(lambda: self._probe(proc)[0], timeout)

    def recover_service(self, name: str, timeout: float = 60) -> None:
        """Bring a crashed service back: wait for the watchdog if it restarts it, else start it.

        Raises ClusterError when the watchdog gave up (crash loop) or the service is not
        back and ready within ``timeout`` seconds.
        """
        if not self.supervised(name):
            self.start_service(name, timeout)
            return

        def back() -> bool:
            proc = self.process(name)
            state = proc.supervision.get("state")
            if state == "crash-loop":
                raise _GaveUp(proc.supervision.get("last_exit", ""))
            return state == "running" and proc.alive() and self._probe(proc)[0]

        try:
            ok = wait_until(back, timeout, interval=0.1)
        except _GaveUp as exc:
            raise ClusterError(f"{name} is in a crash loop (last exit: {exc}); the watchdog "
                               f"gave up: see {self.process(name).log}, fix it, then run "
                               "`djscale cluster up`") from None
        if not ok:
            raise ClusterError(f"the watchdog did not bring {name} back within {timeout:.0f} s;"
                               f" see {self.process(name).log} and logs/watchdog.log")


class _GaveUp(BaseException):  # not an Exception: wait_until must let it through
    pass


def listens(pid: int, port: int) -> bool:
    """True if process ``pid`` holds a TCP socket listening on ``port`` (read from /proc).

    Several processes may listen on one port (``SO_REUSEPORT``): an answer on the port does
    not say which one gave it. /proc/PID/net shows the process's own network namespace.
    """
    if pid <= 0:
        return False
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        for table in ("tcp", "tcp6"):
            path = Path(f"/proc/{pid}/net/{table}")
            if not path.exists():
                continue
            for line in path.read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode
                if (len(fields) > 9 and fields[3] == "0A"
                        and int(fields[1].rsplit(":", 1)[1], 16) == port
                        and fields[9] in inodes):
                    return True
    except OSError:  # the process is gone (or not ours to look at)
        return False
    return False


def service_ready(proc: ManagedProcess, log_offset: int = 0) -> bool:
    """Return True once a (re)started service serves: the probe its kind needs.

    ``log_offset``: where the log ended before the start, for services whose readiness
    is a line in their log (Celery workers, the relay).
    """
    if proc.kind == "celery":
        return _log_says(Path(proc.log), log_offset, " ready.")
    if proc.kind == "relay":
        return _log_says(Path(proc.log), log_offset, "relaying events of")
    if proc.kind == "gateway":
        # During a rollout the old gateway answers on the same port: ready means this
        # process listens (it does once its application started) and the port answers.
        return listens(proc.pid, proc.port) and http_ok(proc.host, proc.port, "/")
    if proc.kind == "watchdog":
        return http_ok(proc.host, proc.port, "/metrics")
    if proc.kind in ("gunicorn", "nginx", "haproxy", "dashboard"):
        return http_ok(proc.host, proc.port)
    if proc.kind == "redis":
        return rd.ping(proc.host, proc.port)
    if proc.kind in ha.KINDS:
        return ha.ready(proc)
    if proc.kind == "varnish":
        return http_ok(proc.host, proc.port, varnish.LIVE_PATH)
    return True


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is a loopback address of this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    """``host`` as the host part of ``host:port`` (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def _pg_ready(host: str, port: int, user: str) -> bool:
    with pg.connect(host, port, user, "postgres", timeout=1) as conn:
        conn.execute("SELECT 1")
    return True


def _replica_ready(host: str, port: int, user: str, database: str) -> bool:
    st = pg.replica_status(host, port, user, database)
    return st.in_recovery


def _log_says(log: Path, offset: int, needle: str) -> bool:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return needle.encode() in fh.read()
    except OSError:
        return False
