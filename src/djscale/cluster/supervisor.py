"""The one place where djscale starts and stops operating-system processes.

Every service of the local cluster (PostgreSQL, Redis, gunicorn, nginx, HAProxy, Celery)
runs as a :class:`ManagedProcess`: started in its own session (so stopping it stops its
whole process group and it outlives the ``djscale`` command that started it), with
stdout and stderr appended to a log file, and described by a JSON-serialisable record so
another ``djscale`` invocation can find, probe and stop it.

A process may run inside a Linux network namespace (``netns``: a "host" of a multi-host
topology on one machine): it is started as ``nsenter --net=/run/netns/NS [setpriv ...]
CMD`` (:func:`in_netns`). Both exec in place, so the recorded pid is the service's own pid
and process-group stop/kill work exactly as without a namespace. ``nsenter --net`` only
switches the network namespace; ``ip netns exec`` would also remount ``/sys`` in a new
mount namespace, which fails where ``/`` is not a mount point (a chroot).

This module knows nothing about what the processes are; readiness probes are passed in.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from djscale.cluster import ports
from djscale.errors import ServiceStartError

__all__ = [
    "ManagedProcess",
    "free_port",
    "pid_alive",
    "run",
    "tail",
    "tcp_ready",
    "wait_until",
]

def free_port(host: str = "127.0.0.1", *, companions: tuple[int, ...] = ()) -> int:
    """Return a port free on ``host`` (and ``port + offset`` for each companion offset).

    The port is leased through :mod:`djscale.cluster.ports` for
    :data:`~djscale.cluster.ports.DEFAULT_LEASE_SECONDS` (or until this process ends), so
    no other djscale process is handed it meanwhile. Code that starts the service itself
    should prefer :func:`djscale.cluster.ports.reserve` and release the lease once the
    service listens.
    """
    return ports.reserve(host, companions=companions, label="free_port").port


def tcp_ready(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


NETNS_DIR = "/run/netns"
"""Where ``ip netns add`` pins named network namespaces."""


def in_netns(netns: str) -> list[str]:
    """The command prefix that runs a command in network namespace ``netns`` (same pid)."""
    return ["nsenter", f"--net={NETNS_DIR}/{netns}"]


# Lives beside the port reservations (which need it first); re-exported for the cluster.
pid_alive = ports.pid_alive


def tail(path: str | Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - a probe that raises is a probe that failed
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _user_kwargs(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def run(cmd: Sequence[str], *, service: str, log: str | Path | None = None,
        user: str | None = None, env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None, timeout: float = 120) -> str:
    """Run a short command to completion; raise ServiceStartError naming ``service`` if it fails.

    Returns the command's combined output.
    """
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd,
            env=dict(env) if env is not None else None, check=False, **_user_kwargs(user),
        )
    except FileNotFoundError:
        raise ServiceStartError(
            service, f"command not found: {cmd[0]} (run `make setup`)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceStartError(service, f"`{' '.join(cmd)}` timed out after {timeout}s") from None
    output = (proc.stdout or "") + (proc.stderr or "")
    if log is not None:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{output}")
    if proc.returncode != 0:
        lines = "\n".join(output.strip().splitlines()[-20:])
        raise ServiceStartError(
            service, f"`{' '.join(cmd)}` exited with status {proc.returncode}", lines
        )
    return output


@dataclass
class ManagedProcess:
    """A long-running service process and how to reach, probe and stop it."""

    name: str
    kind: str
    cmd: list[str]
    log: str
    host: str = "127.0.0.1"
    port: int = 0
    pid: int = 0
    cwd: str = ""
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    role: str = ""
    group: str = ""
    data_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    netns: str = ""
    """Network namespace to run in ('' = the supervisor's own)."""
    restart: bool = False
    """Restart it when it dies (:mod:`djscale.cluster.watchdog` does, if one runs)."""
    supervision: dict[str, Any] = field(default_factory=dict)
    """What the watchdog knows: ``state``, ``restarts``, ``last_exit``, ... (see there)."""

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> tuple[list[str], dict[str, Any]]:
        """The command line to start and the Popen user arguments (netns-aware)."""
        if not self.netns:
            return list(self.cmd), _user_kwargs(self.user)
        # Entering a namespace needs root, so the switch to ``user`` happens after it
        # (setpriv), not in Popen.
        prefix = in_netns(self.netns)
        if self.user is not None:
            prefix += ["setpriv", f"--reuid={self.user}", f"--regid={self.user}",
                       "--init-groups"]
        return [*prefix, *self.cmd], {}

    def start(self) -> None:
        """Start the process in a new session with output appended to its log."""
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        cmd, user_kwargs = self.command()
        with open(self.log, "ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.cwd or None, env=env, start_new_session=True, **user_kwargs,
                )
            except FileNotFoundError:
                raise ServiceStartError(
                    self.name, f"command not found: {cmd[0]} (run `make setup`)"
                ) from None
        self.pid = proc.pid
        # The service outlives this process; the Popen object is kept only so that we
        # can reap it (no zombie) if it dies while we are still running.
        _children[self.pid] = proc

    def alive(self) -> bool:
        """Return True if the process is running."""
        if self.pid <= 0:
            return False
        child = _children.get(self.pid)
        if child is not None and child.poll() is not None:
            return False
        return pid_alive(self.pid)

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``probe()`` is true; raise ServiceStartError with the log tail if not."""
        def ready() -> bool:
            if not self.alive():
                raise _Died
            return probe()

        try:
            ok = wait_until(ready, timeout)
        except _Died:
            ok = False
        if not ok:
            reason = ("exited during start-up" if not self.alive()
                      else f"not ready after {timeout:.0f}s")
            raise ServiceStartError(self.name, reason, tail(self.log, 40))

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the whole process group: ``stop_signal``, then SIGKILL after ``timeout``.

        A Celery worker (kind ``celery``) first gets ``stop_signal`` on its main process
        alone, Celery's warm shutdown: it stops taking tasks and waits for the running
        ones. A signal to the whole group would reach the pool's children too, which die
        mid-task (``WorkerLostError``: the task is redelivered and its work done twice up to
        its inbox). The group is signalled only if the worker is not gone after ``timeout``.
        """
        if self.pid <= 0:
            return
        if self.kind == "celery":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, self.stop_signal)
            if wait_until(lambda: not self._group_alive(), timeout):
                self._reap()
                return
            timeout = 5.0
        self._signal_group(self.stop_signal)
        if not wait_until(lambda: not self._group_alive(), timeout):
            self._signal_group(signal.SIGKILL)
            wait_until(lambda: not self._group_alive(), 5)
        self._reap()

    def kill(self) -> None:
        """Kill the process group at once with SIGKILL (a crash, for chaos tests)."""
        self._signal_group(signal.SIGKILL)
        wait_until(lambda: not self._group_alive(), 5)
        self._reap()

    def _reap(self) -> None:
        child = _children.pop(self.pid, None)
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=1)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def _group_alive(self) -> bool:
        if self.alive():
            return True
        return bool(group_members(self.pid))

    # ------------------------------------------------------------------ records

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable description of this process."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ManagedProcess:
        """Rebuild a process description written by :meth:`to_record`.

        Keys this version does not know (a record written by a newer djscale) are ignored.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def exit_reason(self) -> str:
        """How the (dead) process ended, as far as this process can tell.

        Known when this process started it (it reaps it) or while it is a zombie of
        another parent; else only that it is gone.
        """
        child = _children.get(self.pid)
        if child is None:
            code = _zombie_exit_code(self.pid)
        else:
            # A multi-threaded process (a Celery worker) shows as a zombie before its last
            # thread is gone, and only then can it be reaped: give it a moment.
            try:
                code = child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            return "exited (status unknown)"
        if code < 0:
            return f"killed by {_signal_name(-code)}"
        return f"exit status {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _zombie_exit_code(pid: int) -> int | None:
    """The wait status of zombie ``pid`` as a Popen-style return code (None if unknown)."""
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    # Field 52 of stat (index 49 after the command) is the exit code (Linux 3.5+).
    if fields_[0] != "Z" or len(fields_) < 50:
        return None
    status = int(fields_[49])
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


class _Died(BaseException):  # not an Exception: wait_until must let it through
    pass


_children: dict[int, subprocess.Popen[bytes]] = {}


def group_members(pgid: int) -> list[int]:
    """Return the pids of live processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
