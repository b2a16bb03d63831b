"""The port allocator: no port leased twice across threads and processes, companions too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale.cluster import ports

# One process of the stress test: THREADS threads each lease COUNT ports with a bus
# companion, all leases are held until every thread is done, then printed as JSON.
_WORKER = r"""
import json, sys, threading
from djscale.cluster import ports
threads, count, low, high = map(int, sys.argv[1:5])
# A narrow range, so that the processes compete for the same ports.
ports.candidate_range = lambda companions=(): range(low, high)
leases, lock, barrier = [], threading.Lock(), threading.Barrier(threads)
def work():
    barrier.wait()
    for _ in range(count):
        lease = ports.reserve(companions=(ports.REDIS_BUS_OFFSET,), label="stress")
        with lock:
            leases.append(lease)
ts = [threading.Thread(target=work) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
sys.stdout.write(json.dumps([list(lease.ports) for lease in leases]) + "\n")
sys.stdout.flush()
sys.stdin.read()  # hold the leases until the test has read every process's answer
"""


@pytest.fixture(autouse=True)
def lease_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "leases"
    monkeypatch.setenv("DJSCALE_PORTS_DIR", str(folder))
    yield folder


def test_concurrent_processes_and_threads_never_get_the_same_port_or_bus_port() -> None:
    processes, threads, count = 6, 4, 40
    low = ports.candidate_range((ports.REDIS_BUS_OFFSET,)).start
    high = low + 2 * processes * threads * count  # half of the bases will be leased
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(threads), str(count),
                               str(low), str(high)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
             for _ in range(processes)]
    answers = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            answers.append(json.loads(proc.stdout.readline().decode() or "[]"))
    finally:
        for proc in procs:
            proc.communicate(b"")
    leased = [tuple(p) for answer in answers for p in answer]
    assert len(leased) == processes * threads * count
    # Every lease is a port and its bus port, 10000 above it ...
    assert all(bus == port + ports.REDIS_BUS_OFFSET for port, bus in leased)
    # ... and no port appears twice, as a port or as a bus port.
    seen = Counter(p for pair in leased for p in pair)
    assert [p for p, n in seen.items() if n > 1] == []
    # Every one is below the kernel's ephemeral range (no outgoing connection takes it).
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert max(seen) < low


def test_a_port_whose_bus_port_is_taken_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two candidates; the first one's bus port has a listener.
    with ports.reserve(companions=(1, ports.REDIS_BUS_OFFSET, ports.REDIS_BUS_OFFSET + 1)) as free:
        base = free.port
    monkeypatch.setattr(ports, "candidate_range", lambda companions=(): range(base, base + 2))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + ports.REDIS_BUS_OFFSET))
        busy.listen()
        for _ in range(20):  # the choice is random: the busy one must never be chosen
            with ports.reserve(companions=(ports.REDIS_BUS_OFFSET,)) as lease:
                assert lease.ports == (base + 1, base + 1 + ports.REDIS_BUS_OFFSET)


def test_a_leased_port_is_not_handed_out_until_released(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = ports.reserve()
    monkeypatch.setattr(ports, "candidate_range",
                        lambda companions=(): range(first.port, first.port + 1))
    assert ports.leased(first.port) == os.getpid()
    with pytest.raises(OSError, match="no free TCP port"):
        ports.reserve()
    first.release()
    assert ports.leased(first.port) is None
    assert ports.reserve().port == first.port


def test_a_lease_of_a_dead_process_or_past_its_expiry_is_stale(lease_dir: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    held = ports.reserve(pid=int(dead.stdout))
    assert ports.leased(held.port) is None
    expired = ports.reserve(seconds=-1)
    assert ports.leased(expired.port) is None
    assert not (lease_dir / str(expired.port)).exists()  # cleaned up by whoever looked


def test_claim_refuses_a_port_someone_else_leased() -> None:
    other = ports.reserve(pid=os.getppid())  # a live process that is not us
    assert ports.claim(other.port) is None
    mine = ports.reserve()
    again = ports.claim(mine.port, seconds=None)
    assert again is not None and ports.leased(mine.port) == os.getpid()
    again.release()
    assert ports.leased(mine.port) is None


def test_free_port_of_the_supervisor_goes_through_the_allocator() -> None:
    from djscale.cluster.supervisor import free_port

    port = free_port()
    assert ports.leased(port) == os.getpid()
    assert ports.port_free("127.0.0.1", port)
