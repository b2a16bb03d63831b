"""Change the servers of a *running* load balancer: drain, remove, add, enable.

:class:`LiveBalancer` makes the local cluster's load balancer send new requests to exactly
the upstreams it is given (those not marked ``down``) and returns once the requests it
was still sending to the others have ended, so the caller may stop those servers. Rolling
deploys (:mod:`djscale.cluster.rollout`), ``djscale cluster scale`` and the autoscaler
(:mod:`djscale.cluster.scale`, :mod:`djscale.cluster.autoscale`) change the cluster
through it.

- **HAProxy** is changed through its runtime API (the admin socket of the generated
  config), never reloaded: the process, its listening socket and every client connection
  stay as they are. The config has spare ``server`` slots in maintenance
  (:func:`djscale.cluster.lb.haproxy_config`); a new server fills one (``set server ...
  addr``) and is enabled (``state ready``); a server leaving is set to ``drain`` (no new
  requests), waited for until its current sessions (``scur``) are 0, then put in ``maint``.
- **nginx** has no runtime API in its open-source build. The local cluster's nginx
  balances over fixed Unix-socket *slots* (:mod:`djscale.cluster.lb`, "nginx slots"), each
  a link to the socket of one app server: the links are re-pointed (atomic ``rename``),
  nginx is never reloaded, and a server leaving is waited for until no connection to its
  socket is left (``/proc/net/unix``): nginx opens one per request, so none can reach it
  afterwards.
- **nginx without slots** (a load balancer or app server in a network namespace, which a
  Unix socket does not cross): the config is rewritten and the master re-reads it
  (``SIGHUP``, what ``nginx -s reload`` sends). New workers use the new upstream list at
  once; the old ones finish their in-flight requests and exit, and that exit is what is
  waited for. An old worker also closes its *idle* keep-alive client connections at once
  (nginx's graceful shutdown does that), so a client that sends its next request on such
  a connection in the same instant sees the connection close and has to retry it, as
  HTTP/1.1 clients must for idempotent requests; the slots and HAProxy have no such window.

The config file (HAProxy, nginx without slots) or the slot links on disk are what a load
balancer restarted by the watchdog comes back with: the current servers.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from djscale.cluster.lb import Upstream, point_slots, unix_connections, write_config
from djscale.cluster.supervisor import ManagedProcess, group_members, wait_until
from djscale.errors import ClusterError
from djscale.topology import LoadBalancerSpec

__all__ = ["BACKEND", "HAPROXY_SLOTS", "LiveBalancer", "haproxy_command"]

BACKEND = "djscale_app"
"""The backend of the generated HAProxy config (:func:`djscale.cluster.lb.haproxy_config`)."""

HAPROXY_SLOTS = 16
"""Server lines of the generated HAProxy config at least (more with a larger autoscale max)."""


def haproxy_command(sock: Path, command: str, timeout: float = 5.0) -> str:
    """Send one command to HAProxy's runtime API at ``sock``; return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(sock))
        except OSError as exc:
            raise ClusterError(f"cannot reach HAProxy's runtime API at {sock}: {exc}; is the "
                               "load balancer running? (`djscale cluster status`)") from None
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


class LiveBalancer:
    """The running load balancer ``proc`` (nginx or HAProxy) of ``spec``, changed live."""

    def __init__(self, spec: LoadBalancerSpec, proc: ManagedProcess, *, slots: int,
                 drain_timeout: float = 60.0) -> None:
        self.spec = spec
        self.proc = proc
        self.slots = slots
        self.drain_timeout = drain_timeout
        self.run_dir = Path(str(proc.extra.get("config", ""))).parent
        slot_dir = proc.extra.get("slot_dir") if spec.kind == "nginx" else None
        self.slot_dir = Path(str(slot_dir)) if slot_dir else None
        """nginx's Unix-socket slots (None: nginx reloads, or HAProxy)."""
        if self.slot_dir is not None:
            self.slots = int(proc.extra.get("slots") or slots)

    # ------------------------------------------------------------------ the one operation

    def apply(self, upstreams: Sequence[Upstream]) -> None:
        """Send new requests only to the ``upstreams`` not ``down``; wait until the rest idle.

        Returns once no request is in flight any more to a server that is ``down`` or not
        listed; raises ClusterError when that takes longer than ``drain_timeout``.
        """
        if not self.proc.alive():
            raise ClusterError("the load balancer is not running: start it with "
                               "`djscale cluster up --only lb`")
        if self.slot_dir is not None:
            self._apply_slots(upstreams)
            return
        write_config(self.spec, upstreams, port=self.proc.port, run_dir=self.run_dir,
                     log=Path(self.proc.log), slots=self.slots, netns=self.proc.netns)
        if self.spec.kind == "haproxy":
            self._apply_haproxy(upstreams)
        else:
            self._reload_nginx()

    # ------------------------------------------------------------------ HAProxy

    @property
    def socket_path(self) -> Path:
        """The admin socket of the generated HAProxy config."""
        return self.run_dir / "haproxy.sock"

    def command(self, text: str) -> str:
        """One runtime API command; an answer other than empty or a known OK is an error."""
        answer = haproxy_command(self.socket_path, text).strip()
        if answer and not answer.startswith(("IP changed", "no need to change", "port changed")):
            raise ClusterError(f"HAProxy refused `{text}`: {answer}")
        return answer

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the app backend's servers, by server name."""
        text = haproxy_command(self.socket_path, "show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows
                if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND",
                                                                                "FRONTEND")}

    def _apply_haproxy(self, upstreams: Sequence[Upstream]) -> None:
        slots = self.stats()
        wanted = {u.name: u for u in upstreams}
        missing = sorted(set(wanted) - set(slots))
        if missing:
            raise ClusterError(
                f"the running HAProxy has no server slot for {', '.join(missing)} (it has "
                f"{len(slots)}): restart the load balancer to get more slots "
                "(`djscale cluster down` / `up`), or scale to fewer servers")
        # Those staying in rotation first, and healthy, before any other leaves it: a
        # server leaving while the rest are not up yet would leave HAProxy none.
        for target in wanted.values():
            if target.down:
                continue
            self.command(f"set server {BACKEND}/{target.name} addr {target.host} "
                         f"port {target.port}")
            self.command(f"set server {BACKEND}/{target.name} weight {target.weight}")
            self.command(f"set server {BACKEND}/{target.name} state ready")
        joining = [u.name for u in upstreams if not u.down]
        if not wait_until(lambda: all(self.stats()[n].get("status", "").startswith("UP")
                                      for n in joining), self.drain_timeout, interval=0.1):
            raise ClusterError(f"HAProxy did not see {', '.join(joining)} healthy within "
                               f"{self.drain_timeout:.0f} s (check /health/ready)")
        leaving = []
        for name, row in slots.items():
            keep = wanted.get(name)
            if (keep is None or keep.down) and not row.get("status", "").startswith(
                    "MAINT"):
                self.command(f"set server {BACKEND}/{name} state drain")
                leaving.append(name)
        for name in leaving:
            if not wait_until(lambda n=name: self.stats()[n].get("scur") == "0",  # type: ignore[misc]
                              self.drain_timeout, interval=0.05):
                raise ClusterError(f"{name} still had requests in flight after "
                                   f"{self.drain_timeout:.0f} s of draining")
            self.command(f"set server {BACKEND}/{name} state maint")

    # ------------------------------------------------------------------ nginx

    def _apply_slots(self, upstreams: Sequence[Upstream]) -> None:
        assert self.slot_dir is not None
        try:
            leaving = point_slots(self.slot_dir, self.slots, upstreams)
        except ValueError as exc:
            raise ClusterError(f"cannot point nginx's slots at the app servers: {exc}"
                               ) from None
        deadline = time.monotonic() + self.drain_timeout
        for sock in sorted(leaving):
            # Idle twice, 0.1 s apart: a connect that resolved the old link just before
            # the rename is in the listen queue (and counted) by the second look.
            while True:
                left = max(0.0, deadline - time.monotonic())
                if not wait_until(lambda s=sock: unix_connections(s) == 0,  # type: ignore[misc]
                                  left, interval=0.05):
                    raise ClusterError(
                        f"{unix_connections(sock)} connection(s) to {sock} still open after "
                        f"{self.drain_timeout:.0f} s of draining")
                time.sleep(0.1)
                if unix_connections(sock) == 0:
                    break

    def workers(self) -> set[int]:
        """The nginx worker processes (the master's process group, without the master)."""
        return set(group_members(self.proc.pid)) - {self.proc.pid}

    def _reload_nginx(self) -> None:
        before = self.workers()
        os.kill(self.proc.pid, signal.SIGHUP)

        def reloaded() -> bool:
            now = self.workers()
            return bool(now - before) and not (now & before)

        if not wait_until(reloaded, self.drain_timeout, interval=0.05):
            raise ClusterError(
                f"nginx did not finish its reload within {self.drain_timeout:.0f} s (old "
                f"workers {sorted(self.workers() & before)} still serve); see {self.proc.log}")
        # Old workers exit only after their last in-flight request: nothing reaches a
        # removed server any more.
