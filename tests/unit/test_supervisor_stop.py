"""ManagedProcess.stop: a Celery worker's warm shutdown reaches its main process only.

A real process tree stands in for the worker: a main process that, on SIGTERM, waits for
its child (the running "task") and exits, and a child in the same process group that
finishes its task unless it is signalled itself, as Celery's prefork pool children do.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from djscale.cluster.supervisor import ManagedProcess, group_members, wait_until

WORKER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    done = sys.argv[1]
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time; time.sleep(1.5); open(sys.argv[1], 'w').write('done')", done])
    signal.signal(signal.SIGTERM, lambda *a: (child.wait(), sys.exit(0)))
    open(done + ".ready", "w").close()
    while True:
        time.sleep(0.1)
""")


def _worker(tmp_path: Path, kind: str) -> tuple[ManagedProcess, Path]:
    done = tmp_path / f"{kind}.done"
    proc = ManagedProcess(name=f"{kind}-1", kind=kind, log=str(tmp_path / f"{kind}.log"),
                          cmd=[sys.executable, "-c", WORKER, str(done)])
    proc.start()
    assert wait_until(lambda: Path(f"{done}.ready").exists(), 10)
    return proc, done


def test_a_celery_worker_stops_warm_its_running_task_finishes(tmp_path: Path) -> None:
    proc, done = _worker(tmp_path, "celery")
    proc.stop(timeout=10)
    assert done.read_text() == "done"
    assert not proc.alive() and not group_members(proc.pid)


def test_other_services_get_the_signal_on_their_whole_group(tmp_path: Path) -> None:
    proc, done = _worker(tmp_path, "gunicorn")
    proc.stop(timeout=10)
    assert not done.exists()  # the child was signalled with its group
    assert not proc.alive() and not group_members(proc.pid)


def test_a_worker_that_does_not_stop_warm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    ready = tmp_path / "stuck.ready"
    proc = ManagedProcess(name="stuck", kind="celery", log=str(tmp_path / "stuck.log"),
                          cmd=[sys.executable, "-c",
                               "import signal, sys, time\n"
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "open(sys.argv[1], 'w').close()\n"
                               "time.sleep(60)", str(ready)])
    proc.start()
    assert wait_until(ready.exists, 10)
    proc.stop(timeout=0.5)  # ignored by the main process, then by the group: SIGKILL
    assert not proc.alive() and not group_members(proc.pid)
