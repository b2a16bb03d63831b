"""Rolling deploys of a running local cluster: ``djscale cluster rollout``.

Replaces the stateless services one at a time with what the topology file says now (new
code on disk, new settings, a new worker count), the way a Kubernetes rolling update with
``maxUnavailable: 0`` does, while the cluster keeps serving:

1. **app servers**, each in turn: drain it (drain file, out of the load balancer's
   rotation, wait until no request is in flight: :class:`~djscale.cluster.scale.AppPool`),
   stop it gracefully (gunicorn's SIGTERM), start the new one on the same port, wait until
   its ``/health/ready`` answers 200, put it back into rotation; then the next;
2. **Celery workers** (and the outbox relay): warm shutdown (SIGTERM: running tasks
   finish, queued ones wait in the broker), start the new one, wait until it is ready;
3. **the gateway**: the new one starts on the same port beside the old one
   (``SO_REUSEPORT``, :mod:`djscale.gateway_server`); once it listens, the old one gets
   SIGTERM, stops accepting and drains its keep-alive connections (each answers its last
   request with ``Connection: close``). In Kubernetes its Deployment rolls like the app's.

The watchdog does not fight the rollout: a service being replaced is marked ``stopped``
before it is stopped and ``running`` once its successor is ready, and the watchdog only
restarts services that die while ``running``.

**Abort and roll back**: when a new process does not become ready within
``ready_timeout``, it is stopped, the previous command (same port, arguments and
environment) is started again, and every service this rollout already replaced is
replaced back, one at a time, the same way. Files on disk (code, the topology file) are
not reverted: the previous *commands* are restarted, which is what a broken command line,
worker count or settings module needs; revert a broken code change in your checkout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from djscale.cluster.local import LocalCluster
from djscale.cluster.scale import AppPool, reshaping
from djscale.cluster.supervisor import ManagedProcess
from djscale.errors import ClusterError, ServiceStartError

__all__ = ["ROLLOUT_PARTS", "Replacement", "RolloutReport", "rollout"]

ROLLOUT_PARTS = ("app", "celery", "gateway")
"""What ``rollout`` replaces, in this order."""


@dataclass(frozen=True)
class Replacement:
    """One service replaced: its name and its pid before and after."""

    name: str
    old_pid: int
    new_pid: int
    seconds: float


@dataclass
class RolloutReport:
    """What a rollout did."""

    replaced: list[Replacement] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)

    def text(self) -> str:
        """Human-readable lines, one per replaced service."""
        lines = [f"{r.name}: pid {r.old_pid} -> {r.new_pid} ({r.seconds:.1f} s)"
                 for r in self.replaced]
        if self.rolled_back:
            lines.append("rolled back: " + ", ".join(self.rolled_back))
        return "\n".join(lines)


def rollout(cluster: LocalCluster, *, parts: Iterable[str] = ROLLOUT_PARTS,
            ready_timeout: float = 60.0, log: Callable[[str], None] = lambda line: None
            ) -> RolloutReport:
    """Replace the services of ``parts`` one at a time by what ``cluster.topology`` says.

    ``cluster`` is built on the *new* topology and the state folder of the running
    cluster. Raises ClusterError after rolling back when a new service is not ready.
    """
    wanted = list(parts)
    unknown = set(wanted) - set(ROLLOUT_PARTS)
    if unknown:
        raise ClusterError(f"cannot roll out {', '.join(sorted(unknown))}: choose from "
                           f"{', '.join(ROLLOUT_PARTS)}")
    if not cluster.state.services:
        raise ClusterError(f"no cluster recorded in {cluster.state_dir}: start it with "
                           "`djscale cluster up` first")
    with reshaping(cluster):
        return _rollout(cluster, wanted, ready_timeout, log)


def _rollout(cluster: LocalCluster, wanted: list[str], ready_timeout: float,
             log: Callable[[str], None]) -> RolloutReport:
    pool = AppPool(cluster, ready_timeout=ready_timeout)
    report = RolloutReport()
    done: list[tuple[str, dict[str, Any]]] = []  # (name, previous record), for a rollback
    plan = _plan(cluster, pool, wanted)
    for name, build in plan:
        previous = dict(cluster.state.services[name])
        try:
            report.replaced.append(_replace(pool, name, build))
        except ServiceStartError as exc:
            log(f"{name}: the new version is not ready ({exc}); rolling back")
            _restore(pool, name, previous)
            report.rolled_back.append(name)
            for earlier, record in reversed(done):
                log(f"{earlier}: rolling back")
                _replace(pool, earlier, lambda r=record: _from_record(r))  # type: ignore[misc]
                report.rolled_back.append(earlier)
            raise ClusterError(
                f"rollout aborted: {name} did not become ready ({exc.reason}); rolled back "
                f"{', '.join(report.rolled_back)} to the previous version; see "
                f"{previous.get('log')}") from None
        log(report.text().splitlines()[-1])
        done.append((name, previous))
    return report


Build = Callable[[], ManagedProcess]


def _plan(cluster: LocalCluster, pool: AppPool, parts: list[str]) -> list[tuple[str, Build]]:
    plan: list[tuple[str, Build]] = []
    records = cluster.state.services
    if "app" in parts:
        for name in pool.servers():
            index = int(name.rsplit("-", 1)[1]) - 1
            plan.append((name, lambda i=index: cluster.app_process(i)))  # type: ignore[misc]
    if "celery" in parts:
        for name in pool.workers():
            index = int(name.rsplit("-", 1)[1]) - 1
            plan.append((name, lambda i=index: cluster.celery_process(i)))  # type: ignore[misc]
        if "relay" in records:
            plan.append(("relay", lambda: _from_record(records["relay"], env=cluster.env("relay"))))
    if "gateway" in parts and "gateway" in records:
        plan.append(("gateway", cluster.gateway_process))
    return plan


def _from_record(record: dict[str, Any], env: dict[str, str] | None = None) -> ManagedProcess:
    proc = ManagedProcess.from_record(record)
    proc.pid = 0
    proc.supervision = {}
    if env is not None:
        proc.env = env
    return proc


def _replace(pool: AppPool, name: str, build: Build) -> Replacement:
    started = time.monotonic()
    old = pool.cluster.process(name)
    if _side_by_side(old):
        return _replace_beside(pool, old, build(), started)
    if old.kind == "gunicorn":
        pool.drain(name)
    pool.stop(name)
    proc = build()
    _start(pool, proc)
    return Replacement(name, old.pid, proc.pid, time.monotonic() - started)


def _side_by_side(proc: ManagedProcess) -> bool:
    """A gateway that shares its port (``djscale.gateway_server``) and is running."""
    return (proc.kind == "gateway" and "djscale.gateway_server" in proc.cmd
            and proc.alive())


def _replace_beside(pool: AppPool, old: ManagedProcess, proc: ManagedProcess,
                    started: float) -> Replacement:
    """Start ``proc`` on ``old``'s port beside it, then stop ``old`` (it drains).

    Until the new process listens the old one takes every connection; once both listen
    the kernel spreads new connections over them; the old one's SIGTERM closes its
    listening socket first, then lets its connections finish. When the new one does not
    become ready, the old one is recorded again and ServiceStartError propagates (the
    old one never stopped: nothing to restore).
    """
    try:
        pool.start_worker(proc)
    except ServiceStartError:
        pool.cluster._record(old, state="running")
        raise
    old.stop(timeout=pool.stop_timeout)
    return Replacement(old.name, old.pid, proc.pid, time.monotonic() - started)


def _start(pool: AppPool, proc: ManagedProcess) -> None:
    if proc.kind == "gunicorn":
        pool.start(proc)
        pool.rotate()
    else:
        pool.start_worker(proc)


def _restore(pool: AppPool, name: str, record: dict[str, Any]) -> None:
    """Start the previous version of ``name`` again (its successor failed to start).

    Nothing to do when it still runs (a gateway is replaced side by side).
    """
    if ManagedProcess.from_record(record).alive():
        return
    _start(pool, _from_record(record))
