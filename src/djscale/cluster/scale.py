"""Change how many app servers and Celery workers a *running* local cluster has.

``djscale cluster scale app=N celery=M`` (:func:`scale`), the rolling deploy
(:mod:`djscale.cluster.rollout`) and the autoscaler (:mod:`djscale.cluster.autoscale`)
change the cluster through :class:`AppPool`, whose operations never drop a request:

- **add** an app server: start it on a free port, wait until ``/health/ready`` answers
  200, record it (the watchdog supervises it from then on), then put it into the load
  balancer's rotation (:class:`~djscale.cluster.lbctl.LiveBalancer`);
- **drain** one: create its drain file (``/health/ready`` answers 503 ``draining``, which
  HAProxy's health check and any orchestrator's probe see), take it out of the load
  balancer's rotation and wait until no request to it is in flight;
- **stop** a drained one: mark it ``stopped`` for the watchdog first (a deliberate stop is
  never "restarted"), then SIGTERM: gunicorn's graceful shutdown finishes what is left.

Celery workers are started and stopped the same way, without a load balancer: SIGTERM to
the worker's main process is Celery's warm shutdown (it takes no new task and finishes
the running ones; :meth:`ManagedProcess.stop`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from djscale.cluster.lbctl import LiveBalancer
from djscale.cluster.local import LocalCluster, http_ok, service_ready
from djscale.cluster.state import ClusterState
from djscale.cluster.supervisor import ManagedProcess
from djscale.errors import ClusterError, ServiceStartError

__all__ = ["AppPool", "ScaleRequest", "parse_scale_args", "reshaping", "scale"]


@contextlib.contextmanager
def reshaping(cluster: LocalCluster, *, wait: bool = True) -> Iterator[None]:
    """Hold the cluster's reshaping lock: one rollout / scale / autoscaler step at a time.

    ``wait=False``: raise ClusterError at once when someone else holds it.
    """
    cluster.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cluster.state_dir / "reshape.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ClusterError("another rollout or scale of this cluster is running") from None
        yield
    finally:
        os.close(fd)


class AppPool:
    """The app servers (and Celery workers) of a running ``cluster``, changed one at a time."""

    def __init__(self, cluster: LocalCluster, *, ready_timeout: float = 60.0,
                 drain_timeout: float = 60.0, stop_timeout: float | None = None) -> None:
        self.cluster = cluster
        self.ready_timeout = ready_timeout
        # gunicorn's graceful timeout is 5 s; a worker busy past that is killed by gunicorn.
        self.stop_timeout = stop_timeout if stop_timeout is not None else 15.0
        self.balancer: LiveBalancer | None = None
        if "lb" in cluster.state.services:
            self.balancer = LiveBalancer(cluster.topology.lb, cluster.process("lb"),
                                         slots=cluster.lb_slots(), drain_timeout=drain_timeout)

    # ------------------------------------------------------------------ app servers

    def servers(self) -> list[str]:
        """The app servers recorded now, in index order."""
        return self.cluster.app_servers()

    def drain_path(self, name: str) -> Path:
        """The drain file of app server ``name`` (see :func:`djscale.http.health.drain_file`)."""
        return self.cluster.state_dir / "drain" / name

    def rotate(self, *, out: tuple[str, ...] = ()) -> None:
        """Balance over every recorded app server except ``out``; wait until ``out`` idles."""
        if self.balancer is None:
            return
        ups = [dataclasses.replace(u, down=u.name in out) for u in self.cluster.upstreams()]
        if not any(not u.down for u in ups):
            raise ClusterError("refusing to take the last app server out of rotation")
        self.balancer.apply(ups)

    def drain(self, name: str) -> None:
        """Take app server ``name`` out of rotation and wait until it serves no request."""
        path = self.drain_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self.rotate(out=(name,))

    def stop(self, name: str) -> ManagedProcess:
        """Stop service ``name`` gracefully, the watchdog told first; return its record."""
        self.cluster._supervise(name, state="stopped")
        proc = self.cluster.process(name)
        proc.stop(timeout=WORKER_STOP_TIMEOUT if proc.kind == "celery" else self.stop_timeout)
        return proc

    def start(self, proc: ManagedProcess) -> None:
        """Start app server ``proc`` (not in rotation yet), wait until ready, record it.

        Raises ServiceStartError (after stopping it) when it is not ready in time.
        """
        self.drain_path(proc.name).unlink(missing_ok=True)
        self._boot(proc, lambda: http_ok(proc.host, proc.port, "/health/ready"),
                   self.ready_timeout)

    def _boot(self, proc: ManagedProcess, ready: Callable[[], bool], timeout: float) -> None:
        proc.pid = 0
        try:
            proc.start()
            # "stopped" until ready: the watchdog restarts nothing that is still booting.
            self.cluster._record(proc, state="stopped", recent=[])
            proc.wait_ready(ready, timeout)
        except ServiceStartError:
            self.cluster._supervise(proc.name, state="stopped")
            proc.stop(timeout=self.stop_timeout)
            raise
        finally:
            self.cluster._release(proc.name)
        self.cluster._supervise(proc.name, state="running")

    def _add(self, names: list[str], build: Callable[[int], ManagedProcess],
             start: Callable[[ManagedProcess], None]) -> str:
        """Build the lowest free index's process and start it; forget it when it fails."""
        taken = {int(n.rsplit("-", 1)[1]) for n in names}
        proc = build(next(i for i in range(len(taken) + 1) if i + 1 not in taken))
        try:
            start(proc)
        except ServiceStartError:
            self._forget(proc.name)
            raise
        return proc.name

    def add(self) -> str:
        """Start one more app server and put it into rotation; return its name."""
        name = self._add(self.servers(), self.cluster.app_process, self.start)
        self.rotate()
        return name

    def remove(self, name: str | None = None) -> str:
        """Drain, stop and forget app server ``name`` (default: the highest-numbered one)."""
        servers = self.servers()
        name = name or servers[-1]
        if len(servers) <= 1:
            raise ClusterError("refusing to remove the last app server")
        self.drain(name)
        self.stop(name)
        self._forget(name)
        self.drain_path(name).unlink(missing_ok=True)
        self.rotate()
        return name

    def _forget(self, name: str) -> None:
        with ClusterState.transaction(self.cluster.state_dir) as state:
            state.services.pop(name, None)
        self.cluster.state.services = state.services

    # ------------------------------------------------------------------ celery

    def workers(self) -> list[str]:
        """The Celery workers recorded now, in index order."""
        self.cluster._reload()
        names = [n for n, r in self.cluster.state.services.items() if r.get("kind") == "celery"]
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))

    def start_worker(self, proc: ManagedProcess, timeout: float | None = None) -> None:
        """Start a Celery worker (or the relay, or the gateway), wait until ready, record it."""
        log = Path(proc.log)
        offset = log.stat().st_size if log.exists() else 0
        self._boot(proc, lambda: service_ready(proc, offset), timeout or self.ready_timeout)

    def add_worker(self) -> str:
        """Start one more Celery worker; return its name."""
        return self._add(self.workers(), self.cluster.celery_process, self.start_worker)

    def remove_worker(self, name: str | None = None, timeout: float = 60.0) -> str:
        """Warm-shut-down and forget Celery worker ``name`` (default: the last one)."""
        name = name or self.workers()[-1]
        self.cluster._supervise(name, state="stopped")
        self.cluster.process(name).stop(timeout)  # a warm shutdown
        self._forget(name)
        return name


WORKER_STOP_TIMEOUT = 60.0
"""How long a Celery worker's warm shutdown may take (its running tasks) before SIGKILL."""


@dataclasses.dataclass(frozen=True)
class ScaleRequest:
    """The counts asked for by ``djscale cluster scale`` (None: leave as is)."""

    app: int | None = None
    celery: int | None = None


def parse_scale_args(args: list[str]) -> ScaleRequest:
    """Parse ``app=N celery=M``; raise ClusterError with a one-line message when invalid."""
    found: dict[str, int] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("app", "celery") or not value.isdigit():
            raise ClusterError(f"cannot read {arg!r}: write app=N and/or celery=M "
                               "(N >= 1, M >= 0), e.g. `djscale cluster scale app=4`")
        if key in found:
            raise ClusterError(f"{key}= is given twice")
        found[key] = int(value)
    if not found:
        raise ClusterError("nothing to scale: give app=N and/or celery=M")
    if found.get("app") == 0:
        raise ClusterError("app=0 would stop serving: keep at least one app server")
    return ScaleRequest(app=found.get("app"), celery=found.get("celery"))


def scale(cluster: LocalCluster, request: ScaleRequest, *, log: bool = True) -> list[str]:
    """Bring the running ``cluster`` to the requested counts; return what was done."""
    if not cluster.state.services:
        raise ClusterError(f"no cluster recorded in {cluster.state_dir}: start it with "
                           "`djscale cluster up` first")
    with reshaping(cluster):
        return _scale(cluster, request, log=log)


def _scale(cluster: LocalCluster, request: ScaleRequest, *, log: bool) -> list[str]:
    pool = AppPool(cluster)
    done: list[str] = []

    def say(line: str) -> None:
        done.append(line)
        if log:
            print(line, flush=True)

    if request.app is not None:
        if not pool.servers():
            raise ClusterError("this cluster runs no app servers: start them with "
                               "`djscale cluster up --only app,lb`")
        while len(pool.servers()) < request.app:
            name = pool.add()
            say(f"added {name} ({cluster.address(name)[0]}:{cluster.address(name)[1]})")
        while len(pool.servers()) > request.app:
            say(f"removed {pool.remove()}")
    if request.celery is not None:
        if request.celery and not cluster.topology.celery.app:
            raise ClusterError("celery.app is not set in the topology: no worker to start")
        while len(pool.workers()) < request.celery:
            say(f"added {pool.add_worker()}")
        while len(pool.workers()) > request.celery:
            say(f"removed {pool.remove_worker()}")
    return done
