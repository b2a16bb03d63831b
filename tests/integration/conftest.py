"""Fixtures shared by the integration tests.

Each test leaves the shared cluster as it found it. The shared cluster (``tests.settings``)
lives for the whole session and tests run in any order (pytest-randomly), so a test that
pauses replay, stops a process or leaves the router's probe thread running would break
whichever test comes next. After each test:

- the router's replica probe of this process is stopped (its pools are rebuilt on next
  use), so no probe thread of one test measures, or hangs on, the servers of the next;
- every process of the shared cluster must be running, not stopped (SIGSTOP), and every
  replica replaying WAL. A test that left one otherwise gets an error that names it, and
  the cluster is repaired (SIGCONT, ``pg_wal_replay_resume()``) for the tests after it.

Shared helper functions (SQL, replication waits, HTTP) are in ``helpers.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale import testing
from djscale.cluster import LocalCluster
from tests.integration.helpers import process_tree, replica_services, sql

ROOT = Path(__file__).resolve().parents[2]
PROBE_THREAD = "djscale-replica-probe"


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once per session (its sdist lies beside it).

    ``python -m build`` makes the sdist first and the wheel from the unpacked sdist, as a
    package index user gets them: a file the sdist forgets is missing from the wheel too.
    """
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout[-3000:]}" \
                                   f"\n{result.stderr[-3000:]}"
    wheels = sorted(out.glob("djscale-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}: {wheels}"
    return wheels[0]


def stop_router_probe(timeout: float = 30.0) -> None:
    """Stop this process's replica probe thread and wait until it has ended."""
    pool = sys.modules.get("djscale.db.pool")
    if pool is None:
        return
    pool.reset_pools()
    for thread in threading.enumerate():
        if thread.name == PROBE_THREAD:
            thread.join(timeout)


def _stopped(pid: int) -> bool:
    """True when ``pid`` is stopped by a signal (state T in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _repair(cluster: LocalCluster) -> list[str]:
    """Continue stopped processes and resume paused replay; say what was wrong."""
    wrong = []
    for proc in cluster.processes():
        if proc.pid <= 0 or not proc.alive():
            continue
        stopped = [pid for pid in process_tree(proc.pid) if _stopped(pid)]
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if stopped:
            wrong.append(f"{proc.name} was left stopped (SIGSTOP)")
    services = {p.name for p in cluster.processes()}
    for service in replica_services(cluster):
        if service not in services:
            continue
        ((paused,),) = sql(cluster, service, "SELECT pg_is_wal_replay_paused()")
        if paused:
            sql(cluster, service, "SELECT pg_wal_replay_resume()")
            wrong.append(f"{service} was left with WAL replay paused")
    return wrong


@pytest.fixture(autouse=True)
def shared_cluster_left_as_found() -> Iterator[None]:
    """After the test: no router probe thread, the shared cluster running and replaying."""
    stop_router_probe()  # also one started outside the integration tests
    yield
    stop_router_probe()
    cluster = testing._shared
    if cluster is not None:
        wrong = _repair(cluster)
        assert not wrong, "the test did not leave the shared cluster as it found it: " + \
            "; ".join(wrong)
