"""Freeze a service of the local cluster: SIGSTOP its whole process tree, SIGCONT it after.

A stopped process is the simplest *silent* peer: its sockets stay open and (on one host)
the kernel keeps acknowledging TCP for it, but nothing answers. Stopping only the top
process is not enough: a PostgreSQL postmaster's backends serve their connections
without it (docs/reliability.md), so :class:`Freezer` stops the top process first (no
new children can be forked after that), then every descendant, and looks again until no
new one appears. :meth:`Freezer.thaw` continues every process it stopped, in reverse
order; use the freezer as a context manager so the thaw happens even on Ctrl-C or an
error.

Linux only (reads ``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from types import TracebackType

__all__ = ["Freezer", "children", "descendants"]


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/*/stat``)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Field 4 is the parent pid; field 2 (comm) may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children(todo.pop(0), proc)
        found.extend(below)
        todo.extend(below)
    return found


class Freezer:
    """Stops a process tree and continues exactly the processes it stopped."""

    def __init__(self, pid: int) -> None:
        if pid <= 0:
            raise ValueError(f"no process to freeze (pid {pid})")
        self.pid = pid
        self.stopped: list[int] = []

    def _stop(self, pid: int) -> None:
        if pid in self.stopped:
            return
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        self.stopped.append(pid)

    def freeze(self) -> list[int]:
        """SIGSTOP the process and all its descendants; return the pids stopped."""
        self._stop(self.pid)
        while True:
            new = [p for p in descendants(self.pid) if p not in self.stopped]
            if not new:
                return list(self.stopped)
            for pid in new:
                self._stop(pid)

    def thaw(self) -> None:
        """SIGCONT every process this freezer stopped (children first); idempotent."""
        while self.stopped:
            pid = self.stopped.pop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def __enter__(self) -> Freezer:
        try:
            self.freeze()
        except BaseException:
            self.thaw()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.thaw()
