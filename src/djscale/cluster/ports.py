"""The one TCP port allocator of djscale's tooling: local clusters, tests and benchmarks.

A port handed out here is *leased* until the service that will bind it owns it, so no
other djscale process on the machine (another test run, another cluster, a benchmark)
can be handed the same port in between. Three rules make the choice safe:

- **Companion ports are part of the lease.** A Redis Cluster node also listens on its
  bus port, ``port + 10000`` (:data:`REDIS_BUS_OFFSET`; djscale never sets
  ``cluster-port``): :func:`reserve` with ``companions=(REDIS_BUS_OFFSET,)`` only returns
  a port whose bus port is free and unleased too, and leases both.
- **Ports come from below the kernel's ephemeral range**
  (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default). The kernel picks
  the local port of every outgoing connection and of every ``bind(("", 0))`` from that
  range, so a port chosen inside it can be taken by any process between the choice and the
  service's ``bind``, and a node's bus port (``port + 10000``) landed in it; below it,
  only a process that names the port explicitly can take it. Candidates are
  ``[FLOOR, low)`` with every companion in that range too; if the ephemeral range starts
  too low for that, the allocator falls back to the whole unprivileged range.
- **Leases are shared through the file system**: one file per leased port under
  :func:`lease_dir` (``$DJSCALE_PORTS_DIR``, default ``/tmp/djscale-ports``) holding the
  owner's pid and an expiry. A lease is valid while its owner lives and (if it has one)
  its expiry is ahead; a stale lease is removed by the next allocator that meets it.
  Allocation, claim and release hold one ``flock`` on ``<lease_dir>/.lock`` for a few
  microseconds, so concurrent allocators (threads or processes) never lease one port twice.

A port is free when it is not leased and a ``bind`` on it (without ``SO_REUSEADDR``, so a
port in ``TIME_WAIT`` counts as busy) succeeds. Written by hand: the ephemeral-range rule,
companion ports and cross-process leases are what the usual "bind port 0" helpers lack.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "FLOOR",
    "REDIS_BUS_OFFSET",
    "PortLease",
    "candidate_range",
    "claim",
    "lease_dir",
    "leased",
    "pid_alive",
    "port_free",
    "reserve",
]

REDIS_BUS_OFFSET = 10000
"""A Redis Cluster node's bus port is its port plus this (when ``cluster-port`` is unset)."""

FLOOR = 10000
"""Lowest port handed out: below it live the well-known ports of many dev services."""

DEFAULT_LEASE_SECONDS = 600.0
"""How long a lease lasts when nobody releases it (its owner still running)."""

_ATTEMPTS = 4000
_thread_lock = threading.Lock()  # flock is per open file description, not per thread


def lease_dir() -> Path:
    """The folder of the lease files (``$DJSCALE_PORTS_DIR`` or ``/tmp/djscale-ports``)."""
    return Path(os.environ.get("DJSCALE_PORTS_DIR") or "/tmp/djscale-ports")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def candidate_range(companions: Sequence[int] = ()) -> range:
    """The base ports :func:`reserve` may return for a port with these companion offsets."""
    low, _ = _ephemeral_range()
    top = max([0, *companions])
    if low - top - FLOOR >= 1000:
        return range(FLOOR, low - top)
    # The ephemeral range starts too low to stay below it: use the unprivileged range.
    return range(1024, 65536 - top)


def port_free(host: str, port: int) -> bool:
    """Return True if ``port`` can be bound on ``host`` now (nobody listens or connects)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    folder = lease_dir()
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            # Shared by every user's runs; not sticky, so anyone may clear a stale lease.
            folder.chmod(0o777)
    lock_path = folder / ".lock"
    with _thread_lock:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(fd)  # releases the flock


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _lease_owner(folder: Path, port: int) -> int | None:
    """The pid holding a valid lease on ``port`` (None when unleased; stale ones removed)."""
    path = folder / str(port)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pid, expires = int(data["pid"]), data.get("expires")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        pid, expires = 0, 0  # unreadable: treat as stale
    if pid > 0 and pid_alive(pid) and (expires is None or float(expires) > time.time()):
        return pid
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def _write_lease(folder: Path, port: int, pid: int, expires: float | None, label: str) -> None:
    path = folder / str(port)
    tmp = folder / f".{port}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps({"pid": pid, "expires": expires, "for": label}), encoding="utf-8")
    tmp.replace(path)


class PortLease:
    """A leased port (and its companions) until :meth:`release` or the lease expires.

    Use it as a context manager, or call :meth:`release` once the service is listening.
    """

    def __init__(self, port: int, ports: tuple[int, ...], host: str, pid: int) -> None:
        self.port = port
        """The port to give the service."""
        self.ports = ports
        """Every leased port: ``port`` and its companions."""
        self.host = host
        self.pid = pid
        self.released = False

    def release(self) -> None:
        """End the lease (idempotent): the service owns its ports now, or never will."""
        if self.released:
            return
        self.released = True
        with _locked() as folder:
            for port in self.ports:
                if _lease_owner(folder, port) == self.pid:
                    with contextlib.suppress(FileNotFoundError):
                        (folder / str(port)).unlink()

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PortLease({self.host}:{self.port}, ports={self.ports})"


def reserve(host: str = "127.0.0.1", *, companions: Sequence[int] = (), label: str = "",
            seconds: float | None = DEFAULT_LEASE_SECONDS,
            pid: int | None = None) -> PortLease:
    """Lease a free port on ``host`` whose companions (``port + offset``) are free too.

    ``seconds`` bounds the lease (None: while the owner ``pid``, default this process,
    lives). Raises OSError when no such port is found, or when ``host`` is not an
    address of this machine.
    """
    owner = os.getpid() if pid is None else pid
    offsets = tuple(sorted({0, *companions}))
    span = candidate_range(offsets)
    rng = random.Random()
    with _locked() as folder:
        for _ in range(_ATTEMPTS):
            base = rng.randrange(span.start, span.stop)
            ports = tuple(base + off for off in offsets)
            if any(_lease_owner(folder, p) is not None for p in ports):
                continue
            if not all(port_free(host, p) for p in ports):
                continue
            expires = None if seconds is None else time.time() + seconds
            for p in ports:
                _write_lease(folder, p, owner, expires, label)
            return PortLease(base, ports, host, owner)
    raise OSError(errno.EADDRNOTAVAIL, f"no free TCP port (with companions {offsets[1:]}) "
                  f"found on {host} in {span.start}-{span.stop - 1}")


def claim(port: int, host: str = "127.0.0.1", *, companions: Sequence[int] = (),
          label: str = "", seconds: float | None = DEFAULT_LEASE_SECONDS,
          pid: int | None = None) -> PortLease | None:
    """Lease a given port (and companions), e.g. to restart a service on its old port.

    Returns None when another owner holds a valid lease on one of them; whether the port
    can be bound is not checked (the service may still hold it).
    """
    owner = os.getpid() if pid is None else pid
    ports = tuple(port + off for off in sorted({0, *companions}))
    with _locked() as folder:
        if any(_lease_owner(folder, p) not in (None, owner) for p in ports):
            return None
        expires = None if seconds is None else time.time() + seconds
        for p in ports:
            _write_lease(folder, p, owner, expires, label)
    return PortLease(port, ports, host, owner)


def leased(port: int) -> int | None:
    """The pid holding a valid lease on ``port``, or None."""
    with _locked() as folder:
        return _lease_owner(folder, port)
