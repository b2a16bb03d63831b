"""A test run killed with SIGTERM (timeout, a cancelled CI job) still stops its clusters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from djscale.cluster.supervisor import pid_alive, wait_until
from tests.integration.helpers import DEFAULT_SIGNALS

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from djscale.testing import ClusterFactory
    factory = ClusterFactory(Path(sys.argv[1]))
    cluster = factory({"project": {"name": "sigterm"}, "redis": {}}, parts=("redis",))
    print(cluster.process("redis").pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_process_stops_the_clusters_it_booted(tmp_path: Path, sig: int) -> None:
    child = subprocess.Popen([*DEFAULT_SIGNALS, sys.executable, "-c", SCRIPT, str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), child.stderr.read() if child.stderr else line
        redis_pid = int(line)
        assert pid_alive(redis_pid)
        os.kill(child.pid, sig)
        child.wait(timeout=30)
        assert wait_until(lambda: not pid_alive(redis_pid), timeout=10), \
            "Redis outlived the terminated process that booted it"
    finally:
        if child.poll() is None:
            child.kill()


def test_a_factory_removes_the_folder_it_made() -> None:
    from djscale.testing import ClusterFactory

    factory = ClusterFactory()
    cluster = factory({"project": {"name": "tidy"}, "redis": {}}, parts=("redis",))
    pid = cluster.process("redis").pid
    assert factory.base_dir.is_dir()
    factory.close()
    assert not factory.base_dir.exists()
    assert wait_until(lambda: not pid_alive(pid), timeout=10)
