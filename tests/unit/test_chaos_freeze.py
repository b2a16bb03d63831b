"""djscale.chaos.freeze: a whole process tree stopped, and continued, even on an error."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale.chaos.freeze import Freezer, children, descendants
from djscale.cluster.supervisor import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


PARENT = ("import subprocess, sys\n"
          "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "        for _ in range(2)]\n"
          "for kid in kids:\n"
          "    kid.wait()\n")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2:].split()[0]


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    # A parent with two children, like a postmaster with its backends (Python only: the unit
    # tests run with nothing but the virtualenv on PATH).
    proc = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        assert wait_until(lambda: len(children(proc.pid)) == 2, 10, interval=0.01), \
            "the test's process tree did not start its two children"
        yield proc
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        proc.wait()


def test_descendants_lists_the_children_of_a_process(tree: subprocess.Popen[bytes]) -> None:
    assert len(descendants(tree.pid)) == 2


def test_freeze_stops_the_parent_and_every_child(tree: subprocess.Popen[bytes]) -> None:
    freezer = Freezer(tree.pid)
    stopped = freezer.freeze()
    try:
        assert stopped[0] == tree.pid
        assert set(stopped) == {tree.pid, *descendants(tree.pid)}
        assert all(_state(pid) == "T" for pid in stopped)
    finally:
        freezer.thaw()
    assert all(_state(pid) != "T" for pid in stopped)
    assert freezer.stopped == []


def test_the_context_manager_thaws_on_an_interrupt(tree: subprocess.Popen[bytes]) -> None:
    pids = [tree.pid, *descendants(tree.pid)]
    with pytest.raises(KeyboardInterrupt), Freezer(tree.pid):
        assert all(_state(pid) == "T" for pid in pids)
        raise KeyboardInterrupt
    assert all(_state(pid) != "T" for pid in pids)


def test_freezing_no_process_is_an_error() -> None:
    with pytest.raises(ValueError, match="no process"):
        Freezer(0)
