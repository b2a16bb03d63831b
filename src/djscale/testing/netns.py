"""Several "machines" on one Linux box: network namespaces on a private bridge.

:class:`HostNetwork` is a context manager for tests of multi-host topologies. On enter
it creates, in the root namespace (the operator's / test runner's machine), a bridge
with address ``10.77.X.1/24``, and per host a network namespace with ``lo`` up and a veth
into the bridge carrying the host's address ``10.77.X.N/24``. On exit (also after a
failure) it kills whatever still runs in those namespaces and removes every namespace,
veth and the bridge.

Each run claims a free subnet index ``X`` atomically through a pid file under
``/run/djscale-netns`` and names everything after it (``djs<X>br``, ``djs<X>v<N>``,
namespaces ``djs<X>-<host>``), so concurrent runs do not collide; on enter, leftovers of
runs whose process died (a crashed or killed session) are removed first.

The topology's ``[hosts]`` table comes from :meth:`HostNetwork.hosts_table`; the local
cluster then runs each host's processes inside its namespace. This module only builds
and removes the network: it starts no services. It shells out to ``ip`` (iproute2)
because that is the tool that owns namespaces; nothing in the standard library does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from djscale.cluster.supervisor import NETNS_DIR, in_netns, pid_alive
from djscale.errors import ClusterError

__all__ = ["HostNetwork", "namespace_pids", "unavailable_reason"]

RUN_DIR = Path("/run/djscale-netns")
_HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,20}$")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (a reason to skip a test), or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    for tool in ("ip", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    return None


def _ip(*args: str, check: bool = True, netns: str = "") -> str:
    # ``ip -n NS`` would remount /sys in a new mount namespace (fails in a chroot);
    # nsenter only switches the network namespace.
    cmd = [*(in_netns(netns) if netns else []), "ip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def namespace_pids(netns: str) -> list[int]:
    """Pids of the processes running in network namespace ``netns``."""
    return [int(p) for p in _ip("netns", "pids", netns, check=False).split() if p.isdigit()]


def _remove(index: int) -> None:
    """Remove every namespace and link of subnet ``index`` (idempotent)."""
    prefix = f"djs{index}-"
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            for pid in namespace_pids(name):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", name, check=False)
    link_re = re.compile(rf"^\d+: (djs{index}(?:br|v\d+))[@:]")
    for line in _ip("-o", "link", "show", check=False).splitlines():
        found = link_re.match(line)
        if found:
            _ip("link", "del", found.group(1), check=False)
    with contextlib.suppress(FileNotFoundError):
        (RUN_DIR / f"{index}.pid").unlink()
    _release_netns_dir()


def _release_netns_dir() -> None:
    """Unmount /run/netns once no namespace is left in it.

    ``ip netns add`` makes it a (shared) bind mount; left behind, it keeps the folder's
    file system busy (a chroot that runs the tests cannot be removed). ``ip`` mounts it
    again when the next namespace is added.
    """
    with contextlib.suppress(OSError):
        for _ in range(8):  # bind mounts may be stacked by earlier runs
            # os.path.ismount() misses a bind mount of a folder onto itself.
            mounts = Path("/proc/self/mounts").read_text().splitlines()
            if os.listdir(NETNS_DIR) or not any(line.split()[1:2] == [NETNS_DIR]
                                                 for line in mounts):
                return
            if subprocess.run(["umount", NETNS_DIR], capture_output=True, timeout=30,
                              check=False).returncode != 0:
                return


def _remove_stale() -> None:
    """Remove the leftovers of runs whose process is gone."""
    if not RUN_DIR.exists():
        return
    for pidfile in RUN_DIR.glob("*.pid"):
        try:
            owner = int(pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            owner = 0
        if owner <= 0 or not pid_alive(owner):
            _remove(int(pidfile.stem))


class HostNetwork:
    """Network namespaces ("hosts") on a private bridge; see the module docstring.

    ``hosts`` are short names (lowercase letters, digits, ``-``); host ``i`` gets address
    ``10.77.X.(i + 2)``. Use it as a context manager; everything is removed on exit.
    """

    def __init__(self, hosts: Sequence[str], *, base: str = "10.77") -> None:
        if not hosts:
            raise ClusterError("HostNetwork needs at least one host name")
        for name in hosts:
            if not _HOST_RE.match(name):
                raise ClusterError(f"host name {name!r} is invalid: expected lowercase "
                                   "letters, digits and -, at most 21 characters")
        if len(set(hosts)) != len(hosts):
            raise ClusterError(f"host names must be unique: {list(hosts)}")
        if len(hosts) > 200:
            raise ClusterError("HostNetwork supports at most 200 hosts")
        self.host_names = tuple(hosts)
        self.base = base
        self.index = -1

    # ------------------------------------------------------------------ names

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (the test runner's "machine")."""
        return f"{self.base}.{self.index}.1"

    @property
    def bridge(self) -> str:
        """Name of the bridge link in the root namespace."""
        return f"djs{self.index}br"

    def address(self, host: str) -> str:
        """IP address of ``host``."""
        return f"{self.base}.{self.index}.{self.host_names.index(host) + 2}"

    def netns(self, host: str) -> str:
        """Name of ``host``'s network namespace."""
        if host not in self.host_names:
            raise ClusterError(f"no host {host!r} in this network ({', '.join(self.host_names)})")
        return f"djs{self.index}-{host}"

    def namespaces(self) -> list[str]:
        """Names of this network's namespaces."""
        return [self.netns(h) for h in self.host_names]

    def hosts_table(self) -> dict[str, dict[str, str]]:
        """The topology's ``[hosts]`` table for these hosts (address and netns)."""
        return {h: {"address": self.address(h), "netns": self.netns(h)}
                for h in self.host_names}

    def pids(self, host: str) -> list[int]:
        """Pids of the processes running on ``host`` (in its namespace)."""
        return namespace_pids(self.netns(host))

    # ------------------------------------------------------------------ lifecycle

    def _claim(self) -> int:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        used = _ip("-o", "-4", "addr", "show", check=False)
        for index in range(1, 255):
            if f" {self.base}.{index}." in used:
                continue
            try:
                fd = os.open(RUN_DIR / f"{index}.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return index
        raise ClusterError(f"no free subnet {self.base}.X.0/24 for a HostNetwork")

    def __enter__(self) -> HostNetwork:
        reason = unavailable_reason()
        if reason is not None:
            raise ClusterError(reason)
        _remove_stale()
        self.index = self._claim()
        try:
            self._create()
        except BaseException:
            _remove(self.index)
            raise
        return self

    def _create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, host in enumerate(self.host_names):
            ns, veth = self.netns(host), f"djs{self.index}v{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)

    def close(self) -> None:
        """Kill what still runs in the namespaces and remove namespaces, veths and bridge."""
        if self.index >= 0:
            _remove(self.index)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
