"""Network faults between the hosts of a namespace topology: partitions, delay and loss.

The local cluster can run each ``[hosts]`` machine of a topology in its own Linux network
namespace (``netns``; :mod:`djscale.testing.netns` builds them). This module breaks the
network *between* those machines, inside their namespaces, without touching a process:

- :class:`Partition` drops every packet between two groups of hosts: an ``nftables``
  table ``inet djscale_chaos`` in each namespace of both sides drops what comes from, and
  what goes to, the other side's addresses. Established TCP connections go silent (no
  reset, no FIN), as behind a failed switch: only deadlines, keepalives and
  ``tcp_user_timeout`` notice.
- :class:`Delay` delays (and optionally drops a share of) every packet a host sends on its
  interface: ``tc qdisc ... netem delay MS JITTER loss P%`` where the kernel has
  ``sch_netem``; where it does not (``tc`` answers "Specified qdisc kind is unknown"), an
  ``iptables`` ``NFQUEUE`` rule with ``--queue-bypass`` hands the packets to
  :mod:`djscale.chaos.nfqdelay` running in the namespace, which releases them late.

:class:`NetworkFaults` installs faults and removes exactly what it installed, in reverse
order; use it as a context manager so the removal happens on an exception or Ctrl-C too
(SIGINT and SIGTERM are held back while it removes, then delivered). Everything it
installs carries djscale's name (table ``djscale_chaos``, netem handle ``d75c:``, chain
``DJSCALE_CHAOS``, a pid file under ``/run/djscale-chaos``), so :func:`remove_leftovers`
can remove the remains of a run that was killed outright (SIGKILL) before the next one,
and :func:`installed` can say what is in place (tests check it is empty afterwards).

Hosts are named as in the topology (``app1``), or by a service placed on them
(``pg-default-replica1``), several joined with commas (``app1,app2``). Only hosts with a
``netns`` can be acted on: this module never changes the root namespace's network.
It shells out to ``nft``, ``tc`` and ``iptables-legacy`` (the tools that own these kernel
objects) through ``nsenter --net``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from djscale.chaos import nfqdelay
from djscale.cluster.supervisor import in_netns, pid_alive
from djscale.errors import ClusterError
from djscale.topology import HostSpec, Topology

__all__ = ["Delay", "NetworkFaults", "Partition", "installed", "parse_delay",
           "remove_leftovers", "resolve_hosts", "signals_deferred", "terminate_as_interrupt"]

TABLE = "djscale_chaos"
"""The nftables table (family ``inet``) of a partition, in each namespace it touches."""
NETEM_HANDLE = "d75c:"
"""The handle of the root netem qdisc of a delay."""
CHAIN = "DJSCALE_CHAOS"
"""The iptables (legacy) chain sending a host's packets to the delayer's queue."""
QUEUE = 7411
"""The netfilter queue number of the user-space delayer (one per namespace)."""
RUN_DIR = Path("/run/djscale-chaos")
"""Pid files of running delayers (``<netns>.pid``)."""


def _run(netns: str, *cmd: str, stdin: str | None = None, check: bool = True,
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*in_netns(netns), *cmd], input=stdin, capture_output=True,
                          text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` in namespace {netns} failed: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


# ---------------------------------------------------------------------- naming hosts


def resolve_hosts(topology: Topology, spec: str,
                  services: Mapping[str, str] | None = None) -> tuple[HostSpec, ...]:
    """The ``[hosts]`` machines named by ``spec`` (comma-separated host or service names).

    ``services`` maps a service name to its address (``LocalCluster``'s processes); a
    service names the host it runs on. A clear ClusterError for anything else.
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ClusterError(f"no host named in {spec!r}")
    by_name = {h.name: h for h in topology.hosts}
    found: list[HostSpec] = []
    for name in names:
        host = by_name.get(name)
        if host is None and services and name in services:
            host = topology.host_at(services[name])
            if host is None:
                raise ClusterError(f"service {name!r} runs on {services[name]}, which is not a "
                                   "host of the topology's [hosts]")
        if host is None:
            known = ", ".join(sorted(by_name)) or "none: the topology has no [hosts]"
            raise ClusterError(f"{name!r} is neither a host of the topology nor a service of "
                               f"the cluster (hosts: {known})")
        if not host.netns:
            raise ClusterError(f"host {host.name!r} has no netns: network faults act inside "
                               "the hosts' network namespaces (see docs/scaling-out.md)")
        if not Path(f"/run/netns/{host.netns}").exists():
            raise ClusterError(f"host {host.name!r}: network namespace {host.netns!r} does not "
                               "exist (is the cluster up?)")
        if host not in found:
            found.append(host)
    return tuple(found)


def _interface(host: HostSpec) -> str:
    """The interface carrying ``host``'s address inside its namespace."""
    out = _run(host.netns, "ip", "-o", "-4", "addr", "show").stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == host.address:
            return fields[1].split("@")[0]
    raise ClusterError(f"host {host.name!r}: no interface with address {host.address} in "
                       f"namespace {host.netns}")


# ---------------------------------------------------------------------- faults


@dataclass
class Partition:
    """Every packet between hosts ``left`` and hosts ``right`` is dropped (both ways)."""

    left: tuple[HostSpec, ...]
    right: tuple[HostSpec, ...]
    touched: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        both = {h.name for h in self.left} & {h.name for h in self.right}
        if both:
            raise ClusterError(f"a host cannot be partitioned from itself: {', '.join(both)}")

    def prepare(self) -> None:
        """Nothing to get ready: the rules go in at once."""

    def describe(self) -> str:
        """One line for the report."""
        return (f"dropped every packet between {','.join(h.name for h in self.left)} and "
                f"{','.join(h.name for h in self.right)} (nftables table inet {TABLE})")

    def install(self) -> None:
        """Add the drop rules in every namespace of both sides."""
        for side, other in ((self.left, self.right), (self.right, self.left)):
            peers = ", ".join(h.address for h in other)
            for host in side:
                if host.netns in self.touched:
                    continue
                ruleset = (f"table inet {TABLE} {{\n"
                           "  chain input { type filter hook input priority -10; "
                           f"policy accept; ip saddr {{ {peers} }} drop; }}\n"
                           "  chain output { type filter hook output priority -10; "
                           f"policy accept; ip daddr {{ {peers} }} drop; }}\n}}\n")
                self.touched.append(host.netns)
                _run(host.netns, "nft", "-f", "-", stdin=ruleset)

    def remove(self) -> None:
        """Delete the table from every namespace it was added to."""
        while self.touched:
            _run(self.touched.pop(), "nft", "delete", "table", "inet", TABLE, check=False)


@dataclass
class Delay:
    """Every packet ``host`` sends is held ``ms`` (+- ``jitter_ms``); ``loss`` % dropped."""

    host: HostSpec
    ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    mechanism: str = ""
    """``netem`` or ``nfqueue`` once installed."""
    _interface: str = ""
    _delayer: subprocess.Popen[str] | None = None

    def describe(self) -> str:
        """One line for the report."""
        extra = (f" +- {self.jitter_ms:g} ms" if self.jitter_ms else "") + (
            f", {self.loss:g}% lost" if self.loss else "")
        how = {"netem": "tc netem", "nfqueue": "NFQUEUE delayer (no sch_netem in this "
               "kernel)"}.get(self.mechanism, "")
        return (f"delayed every packet {self.host.name} sends by {self.ms:g} ms{extra}"
                + (f" ({how})" if how else ""))

    def prepare(self) -> None:
        """Get ready without delaying yet: a netem qdisc with no delay, or the delayer.

        Starting the delayer takes a moment (a Python process); done before the fault,
        the fault itself is one command.
        """
        self._interface = _interface(self.host)
        proc = _run(self.host.netns, "tc", "qdisc", "add", "dev", self._interface, "root",
                    "handle", NETEM_HANDLE, "netem", "delay", "0ms", check=False)
        if proc.returncode == 0:
            self.mechanism = "netem"
            return
        if "unknown" not in proc.stderr.lower():
            raise ClusterError(f"tc netem on {self.host.name} failed: {proc.stderr.strip()}")
        self._start_delayer()

    def install(self) -> None:
        """Delay: set the netem qdisc's delay, or queue the host's packets to the delayer."""
        if not self.mechanism:
            self.prepare()
        if self.mechanism == "netem":
            netem = ["delay", f"{self.ms:g}ms"] + ([f"{self.jitter_ms:g}ms"] if self.jitter_ms
                                                   else [])
            if self.loss:
                netem += ["loss", f"{self.loss:g}%"]
            _run(self.host.netns, "tc", "qdisc", "change", "dev", self._interface, "root",
                 "handle", NETEM_HANDLE, "netem", *netem)
            return
        ipt = ("iptables-legacy", "-w", "5")
        ns = self.host.netns
        _run(ns, *ipt, "-N", CHAIN)
        _run(ns, *ipt, "-A", CHAIN, "-o", self._interface, "-j", "NFQUEUE", "--queue-num",
             str(QUEUE), "--queue-bypass")
        _run(ns, *ipt, "-I", "OUTPUT", "1", "-j", CHAIN)

    def _start_delayer(self) -> None:
        ns = self.host.netns
        self.mechanism = "nfqueue"
        # Run as a script: the delayer needs only the standard library, and importing the
        # djscale.chaos package would add a second of imports before the delay begins.
        cmd = [*in_netns(ns), sys.executable, "-I", nfqdelay.__file__,
               "--queue", str(QUEUE), "--delay-ms", f"{self.ms:g}",
               "--jitter-ms", f"{self.jitter_ms:g}", "--loss", f"{self.loss:g}"]
        self._delayer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True,
                                         start_new_session=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / f"{ns}.pid").write_text(str(self._delayer.pid))
        assert self._delayer.stdout is not None
        if self._delayer.stdout.readline().strip() != "ready":
            self._delayer.wait(10)
            error = self._delayer.stderr.read() if self._delayer.stderr else ""
            raise ClusterError(f"the packet delayer on {self.host.name} did not start: "
                               f"{error.strip()[-300:]}")

    def remove(self) -> None:
        """Remove the qdisc or the queue rule and stop the delayer (it releases what it holds)."""
        ns = self.host.netns
        if self.mechanism == "netem":
            _run(ns, "tc", "qdisc", "del", "dev", self._interface, "root", check=False)
        elif self.mechanism == "nfqueue":
            _remove_queue_rule(ns)
            if self._delayer is not None:
                _stop_delayer(self._delayer.pid, ns)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._delayer.wait(5)
        self.mechanism = ""


def _remove_queue_rule(netns: str) -> None:
    ipt = ("iptables-legacy", "-w", "5")
    while _run(netns, *ipt, "-D", "OUTPUT", "-j", CHAIN, check=False).returncode == 0:
        pass
    _run(netns, *ipt, "-F", CHAIN, check=False)
    _run(netns, *ipt, "-X", CHAIN, check=False)


def _stop_delayer(pid: int, netns: str) -> None:
    try:
        ours = b"nfqdelay" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        ours = False  # gone already
    if not ours:  # never signal a process that merely reused a stale pid
        with contextlib.suppress(FileNotFoundError):
            (RUN_DIR / f"{netns}.pid").unlink()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (RUN_DIR / f"{netns}.pid").unlink()


def parse_delay(args: Sequence[str]) -> tuple[float, float, float]:
    """``MS [JITTER] [LOSS%]`` -> (ms, jitter_ms, loss percent); clear errors."""
    if not 1 <= len(args) <= 3:
        raise ClusterError("delay takes HOST MS [JITTER] [LOSS%], e.g. "
                           "`djscale chaos delay db-replica1 300 50 1%`")
    values = []
    for what, raw in zip(("MS", "JITTER", "LOSS%"), args, strict=False):
        text = raw.strip().removesuffix("%") if what == "LOSS%" else raw.strip().removesuffix(
            "ms")
        try:
            value = float(text)
        except ValueError:
            raise ClusterError(f"delay: {what} must be a number, got {raw!r}") from None
        if value < 0 or value != value:
            raise ClusterError(f"delay: {what} must not be negative, got {raw!r}")
        values.append(value)
    ms, jitter, loss = [*values, 0.0, 0.0][:3]
    if ms > 60_000:
        raise ClusterError(f"delay: {ms:g} ms is over a minute; give milliseconds")
    if jitter > ms:
        raise ClusterError(f"delay: jitter {jitter:g} ms is larger than the delay {ms:g} ms")
    if loss > 100:
        raise ClusterError(f"delay: loss {loss:g}% is over 100%")
    return ms, jitter, loss


# ---------------------------------------------------------------------- lifecycle


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block (main thread); deliver them after."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (ValueError, OSError):  # pragma: no cover - not the main thread on some platforms
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _raise_interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the undo short
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt during the block, so ``finally`` clauses run."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class NetworkFaults:
    """Faults installed by one chaos run; :meth:`remove` undoes them (also on exit)."""

    def __init__(self) -> None:
        self.faults: list[Partition | Delay] = []

    def prepare(self, fault: Partition | Delay) -> Partition | Delay:
        """Get ``fault`` ready without acting yet (undone by :meth:`remove` too)."""
        self.faults.append(fault)
        try:
            fault.prepare()
        except BaseException:
            self.remove()
            raise
        return fault

    def install(self) -> None:
        """Put every prepared fault in place (removing everything if one fails)."""
        try:
            for fault in self.faults:
                fault.install()
        except BaseException:
            self.remove()
            raise

    def add(self, fault: Partition | Delay) -> Partition | Delay:
        """Prepare and install ``fault`` (removing whatever got installed if that fails)."""
        self.prepare(fault)
        try:
            fault.install()
        except BaseException:
            self.remove()
            raise
        return fault

    def remove(self) -> None:
        """Remove every installed fault, newest first; idempotent; signals wait for it."""
        with signals_deferred():
            while self.faults:
                self.faults.pop().remove()

    def __enter__(self) -> NetworkFaults:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


def installed(topology: Topology) -> dict[str, list[str]]:
    """What djscale's network faults have in place, per host with a namespace ({} if none)."""
    found: dict[str, list[str]] = {}
    for host in topology.hosts:
        if not host.netns or not Path(f"/run/netns/{host.netns}").exists():
            continue
        what = []
        if _run(host.netns, "nft", "list", "table", "inet", TABLE, check=False).returncode == 0:
            what.append(f"nftables table inet {TABLE}")
        qdiscs = _run(host.netns, "tc", "qdisc", "show", check=False).stdout
        if f"netem {NETEM_HANDLE}" in qdiscs:
            what.append("netem qdisc")
        rules = _run(host.netns, "iptables-legacy", "-w", "5", "-S", "OUTPUT",
                     check=False).stdout
        if f"-j {CHAIN}" in rules:
            what.append(f"iptables chain {CHAIN}")
        pidfile = RUN_DIR / f"{host.netns}.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                if pid_alive(int(pidfile.read_text())):
                    what.append("packet delayer process")
        if what:
            found[host.name] = what
    return found


def remove_leftovers(topology: Topology) -> dict[str, list[str]]:
    """Remove what an earlier run killed outright left behind; return what was found."""
    found = installed(topology)
    with signals_deferred():
        for host in topology.hosts:
            if host.name not in found:
                continue
            ns = host.netns
            _run(ns, "nft", "delete", "table", "inet", TABLE, check=False)
            for line in _run(ns, "tc", "qdisc", "show", check=False).stdout.splitlines():
                if f"netem {NETEM_HANDLE}" in line and " dev " in line:
                    dev = line.split(" dev ", 1)[1].split()[0]
                    _run(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            _remove_queue_rule(ns)
            pidfile = RUN_DIR / f"{ns}.pid"
            with contextlib.suppress(ValueError, OSError):
                _stop_delayer(int(pidfile.read_text()), ns)
    return found
