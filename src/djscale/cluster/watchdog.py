"""The watchdog: restarts the local cluster's services that crash, as systemd would.

Started by ``djscale cluster up`` as the cluster's last service (the ``watchdog`` part:
``python -m djscale.cluster.watchdog --state-dir DIR --port P``) and stopped first by
``djscale cluster down``, so ``up`` returns at once and ``down`` still leaves nothing
running. Every :data:`TICK` seconds it reads ``cluster.json`` and looks at each record
with ``restart`` set (the stateless kinds of :data:`djscale.cluster.local.RESTARTED_KINDS`:
app servers, Celery workers, relay, gateway, load balancer, dashboard):

- a process that died (``kill -9``, an exit) is restarted on the same port, command and
  environment after a back-off of ``0.5 s * 2**n`` (at most 30 s), ``n`` being the number
  of restarts since the service last stayed up :attr:`RestartPolicy.window` (60) seconds;
- when :attr:`RestartPolicy.limit` (5) such restarts did not hold, the next death is a
  **crash loop**: the watchdog gives up on that service (state ``crash-loop``) until
  someone starts it again (``djscale cluster up`` or ``LocalCluster.start_service``).
  Counting restarts since the last stable run, not within a sliding window, makes a
  service that needs long to crash (a slow boot, then an exit) give up too, instead of
  restarting forever once its early restarts age out of the window;
- a restarted process counts as started once its kind's readiness probe passes
  (:func:`djscale.cluster.local.service_ready`); one that dies before, or is not ready
  within :attr:`RestartPolicy.start_timeout`, has crashed again.

What it knows is kept in each record's ``supervision`` entry: ``state`` (``running``,
``backoff``, ``starting``, ``crash-loop``, ``stopped``), ``restarts`` (total),
``recent`` (times of the restarts since the last stable run), ``started_at`` (time of
the last restart), ``last_exit`` (``killed by SIGKILL``,
``exit status 3``; the status is known for processes this watchdog started, and for a
zombie of another parent) and ``last_exit_at``. ``djscale cluster status`` and the
dashboard show it; ``/metrics`` on the watchdog's port exports
``djscale_process_restarts_total`` and ``djscale_process_crash_loop`` per service.

A service stopped on purpose (``stop_service``, ``down``) has state ``stopped`` and is
left alone. Every change goes through :meth:`ClusterState.transaction`, and a restart
re-checks the record inside it, so the watchdog and a ``djscale`` command never start one
service twice. While it runs, the watchdog also leases the ports of the services it
watches (:mod:`djscale.cluster.ports`), so no allocator hands one out while its service is
down between a crash and its restart.

Written by hand rather than delegated to supervisord or systemd: the services are already
described by their records (command, environment, namespace, readiness), the restart must
keep the ports every other record and the Django settings point at, and the local cluster
must run where neither is available (containers, CI, a chroot).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from djscale.cluster import ports
from djscale.cluster.local import service_ready
from djscale.cluster.state import STATE_FILE, ClusterState, default_state_dir
from djscale.cluster.supervisor import ManagedProcess

__all__ = ["TICK", "RestartPolicy", "Watchdog", "main"]

TICK = 0.25
"""Seconds between two looks at the services."""


@dataclass(frozen=True)
class RestartPolicy:
    """Back-off and crash-loop limit (systemd's ``RestartSec``/``StartLimitBurst`` idea)."""

    backoff: float = 0.5
    """Delay before the first restart in a window; doubles with each further one."""
    max_backoff: float = 30.0
    limit: int = 5
    """Restarts that may fail to hold (die within ``window``); the next death is a crash loop."""
    window: float = 60.0
    """Seconds a restarted service must stay up for its restart to count as a success."""
    start_timeout: float = 60.0
    """Seconds a restarted service has to become ready."""

    def recent(self, times: Sequence[float], started_at: float, now: float) -> list[float]:
        """The restarts that did not hold: all of ``times``, unless the last one (at
        ``started_at``) has been up ``window`` seconds by ``now``."""
        return [] if now - started_at >= self.window else list(times)

    def delay(self, recent: Sequence[float]) -> float | None:
        """Seconds to wait before the next restart, or None: crash loop, give up."""
        n = len(recent)
        if n >= self.limit:
            return None
        return min(self.max_backoff, self.backoff * (1 << n))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Watchdog:
    """Restart the crashed services recorded under ``state_dir`` (one :meth:`tick` at a time)."""

    def __init__(self, state_dir: Path, policy: RestartPolicy | None = None) -> None:
        self.state_dir = state_dir
        self.policy = policy or RestartPolicy()
        self._offsets: dict[str, int] = {}
        self._started_at: dict[str, float] = {}
        self._leases: dict[str, ports.PortLease] = {}
        self._procs: dict[str, ManagedProcess] = {}  # the ones we started: we reap them

    # ------------------------------------------------------------------ one round

    def tick(self) -> None:
        """Look at every supervised service once and act on what changed."""
        state = ClusterState.read(self.state_dir)
        now = time.time()
        for name, record in state.services.items():
            if not record.get("restart") or not record.get("pid"):
                continue
            self._lease(name, record)
            sup = record.get("supervision") or {}
            phase = sup.get("state", "running")
            if phase in ("stopped", "crash-loop"):
                continue
            proc = self._proc(record)
            if phase == "backoff":
                if now >= float(sup.get("next_start", 0)):
                    self._restart(name, record)
            elif phase == "starting":
                self._check_start(name, proc, now)
            elif not proc.alive():
                self._crashed(name, record, proc.exit_reason())

    def _proc(self, record: dict[str, Any]) -> ManagedProcess:
        proc = ManagedProcess.from_record(record)
        own = self._procs.get(proc.name)
        return own if own is not None and own.pid == proc.pid else proc

    def _lease(self, name: str, record: dict[str, Any]) -> None:
        port = int(record.get("port") or 0)
        held = self._leases.get(name)
        if not port or (held is not None and held.port == port):
            return
        companions = (ports.REDIS_BUS_OFFSET,) if record.get("role") == "cluster-node" else ()
        lease = ports.claim(port, str(record.get("host", "127.0.0.1")), companions=companions,
                            label=f"{name} (watchdog)", seconds=None)
        if lease is not None:
            self._leases[name] = lease

    def _crashed(self, name: str, seen: dict[str, Any], reason: str) -> None:
        """``name`` died: schedule its restart, or give up when it loops."""
        from djscale import metrics

        now = time.time()
        with ClusterState.transaction(self.state_dir) as state:
            record = state.services.get(name)
            if record is None or record.get("pid") != seen.get("pid"):
                return  # someone restarted or removed it meanwhile
            sup = dict(record.get("supervision") or {})
            if sup.get("state", "running") in ("stopped", "crash-loop"):
                return
            recent = self.policy.recent(sup.get("recent", []),
                                        float(sup.get("started_at", 0)), now)
            delay = self.policy.delay(recent)
            sup.update(last_exit=reason, last_exit_at=_now_iso(), recent=recent)
            if delay is None:
                sup["state"] = "crash-loop"
                metrics.record_crash_loop(service=name, looping=True)
                message = (f"{name} died ({reason}) after {len(recent)} restarts that did "
                           f"not stay up {self.policy.window:.0f} s: crash loop, giving up")
            else:
                sup.update(state="backoff", next_start=now + delay)
                message = f"{name} died ({reason}); restart in {delay:.1f} s"
            record["supervision"] = sup
        print(f"{_now_iso()} {message}", flush=True)

    def _restart(self, name: str, seen: dict[str, Any]) -> None:
        from djscale import metrics

        now = time.time()
        with ClusterState.transaction(self.state_dir) as state:
            record = state.services.get(name)
            if record is None or record.get("pid") != seen.get("pid"):
                return
            sup = dict(record.get("supervision") or {})
            if sup.get("state") != "backoff":
                return
            proc = ManagedProcess.from_record(record)
            if proc.alive():  # started by hand meanwhile
                sup["state"] = "running"
                record["supervision"] = sup
                return
            log = Path(proc.log)
            self._offsets[name] = log.stat().st_size if log.exists() else 0
            try:
                proc.start()
            except Exception as exc:  # noqa: BLE001 - a failed start is one more crash
                print(f"{_now_iso()} {name}: cannot start: {exc}", flush=True)
                proc.pid = 0
            restarts = int(sup.get("restarts", 0)) + 1
            sup.update(state="starting", restarts=restarts,
                       recent=[*sup.get("recent", []), now], started_at=now,
                       last_restart_at=_now_iso())
            sup.pop("next_start", None)
            record["pid"] = proc.pid or record.get("pid")
            record["supervision"] = sup
        self._procs[name] = proc
        self._started_at[name] = time.monotonic()
        metrics.record_process_restart(service=name, kind=proc.kind)
        print(f"{_now_iso()} {name}: restart {restarts} (pid {proc.pid})", flush=True)

    def _check_start(self, name: str, proc: ManagedProcess, now: float) -> None:
        if not proc.alive():
            self._crashed(name, proc.to_record() | {"pid": proc.pid},
                          f"{proc.exit_reason()} during start-up")
            return
        ready = False
        with contextlib.suppress(Exception):
            ready = service_ready(proc, self._offsets.get(name, 0))
        waited = time.monotonic() - self._started_at.get(name, time.monotonic())
        if ready:
            with ClusterState.transaction(self.state_dir) as state:
                record = state.services.get(name)
                if record is None or record.get("pid") != proc.pid:
                    return
                sup = dict(record.get("supervision") or {})
                if sup.get("state") == "starting":
                    sup["state"] = "running"
                    record["supervision"] = sup
            from djscale import metrics

            metrics.record_crash_loop(service=name, looping=False)
            print(f"{_now_iso()} {name}: ready again", flush=True)
        elif waited > self.policy.start_timeout:
            proc.stop()
            self._crashed(name, {"pid": proc.pid},
                          f"not ready {self.policy.start_timeout:.0f} s after its restart")

    # ------------------------------------------------------------------ lifetime

    def seed_metrics(self) -> None:
        """Start the counters at the restart counts already recorded (a restarted watchdog)."""
        from djscale import metrics

        for name, record in ClusterState.read(self.state_dir).services.items():
            sup = record.get("supervision") or {}
            if record.get("restart"):
                metrics.record_process_restart(service=name, kind=str(record.get("kind")),
                                               count=int(sup.get("restarts", 0)))
                metrics.record_crash_loop(service=name,
                                          looping=sup.get("state") == "crash-loop")

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set or the cluster's state is gone (purged)."""
        missing_since: float | None = None
        while not stop.is_set():
            if not (self.state_dir / STATE_FILE).exists():
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > 5:
                    print(f"{_now_iso()} {self.state_dir} has no cluster any more: exiting",
                          flush=True)
                    return
            else:
                missing_since = None
                if self._replaced():
                    print(f"{_now_iso()} another watchdog watches {self.state_dir}: exiting",
                          flush=True)
                    return
                try:
                    self.tick()
                except Exception as exc:  # noqa: BLE001 - keep watching; say what failed
                    print(f"{_now_iso()} tick failed: {type(exc).__name__}: {exc}",
                          flush=True)
            stop.wait(TICK)

    def _replaced(self) -> bool:
        record = ClusterState.read(self.state_dir).services.get("watchdog") or {}
        pid = int(record.get("pid") or 0)
        return pid not in (0, os.getpid()) and ManagedProcess.from_record(record).alive()

    def close(self) -> None:
        """Give up the port leases."""
        for lease in self._leases.values():
            lease.release()
        self._leases.clear()


def main(argv: Sequence[str] | None = None) -> int:
    """Watch the cluster under ``--state-dir`` and serve ``/metrics`` until terminated."""
    parser = argparse.ArgumentParser(prog="python -m djscale.cluster.watchdog",
                                     description="restart crashed services of a local cluster")
    parser.add_argument("--state-dir", default=None,
                        help="state folder (default: $DJSCALE_STATE_DIR or ./.djscale)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port of /metrics (0: none)")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir).absolute() if args.state_dir else default_state_dir()
    stop = threading.Event()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    watchdog = Watchdog(state_dir)
    watchdog.seed_metrics()
    if args.port:
        from prometheus_client import REGISTRY, start_http_server

        from djscale import metrics

        try:
            start_http_server(args.port, args.host,
                              registry=REGISTRY.restricted_registry(metrics.SUPERVISION_SAMPLES))
        except OSError as exc:
            print(f"watchdog: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
    print(f"{_now_iso()} watching {state_dir}", flush=True)
    try:
        watchdog.run(stop)
    finally:
        watchdog.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
