"""The gateway's leased rate limit under 4 gateway processes: within its documented bound.

Four gateway processes (uvicorn, ``create_app`` from one topology, the shared test
cluster's Redis) limit one client to ``LIMIT`` requests per second. The client asks far
more often than that, through all four at once, for a few seconds. The bound of
:mod:`djscale.services.leased_ratelimit` (docs/services.md, "Rate limit"):

- never more than ``LIMIT`` admissions in any one-second interval (checked with the
  client's clocks: a request counts in an interval only if it was sent after the
  interval began and answered before it ended, so the check cannot be fooled by latency);
- at least ``LIMIT`` per ``buckets + 1`` buckets of saturating demand, less the tokens
  left unspent in each process (at most ``max_batch`` per process).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.local import http_ok
from djscale.cluster.supervisor import ManagedProcess, free_port
from djscale.services.leased_ratelimit import BUCKETS, LeasedRateLimiter
from djscale.testing import write_topology

pytestmark = pytest.mark.integration

PROCESSES = 4
LIMIT = 20
WINDOW = 1.0
SECONDS = 3.5
CLIENT = "203.0.113.9"


ROOT = Path(__file__).resolve().parents[2]


def _uvicorn(name: str, args: list[str], port: int, log: Path,
             env: dict[str, str]) -> ManagedProcess:
    return ManagedProcess(
        name=name, kind="uvicorn", port=port,
        cmd=[sys.executable, "-m", "uvicorn", *args, "--host", "127.0.0.1", "--port",
             str(port), "--no-proxy-headers", "--no-access-log", "--log-level", "warning"],
        log=str(log), env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", **env})


@pytest.fixture()
def gateways(tmp_path: Path, djscale_cluster: LocalCluster) -> Iterator[list[str]]:
    # The upstream runs in its own process (the trivial app of bench_services), so that
    # this test's client loops never slow it down into timeouts.
    up_port = free_port()
    upstream = _uvicorn("upstream", ["benchmarks.bench_services:upstream_app"], up_port,
                        tmp_path / "upstream.log", {})
    host, port = djscale_cluster.address("redis")
    topology = write_topology({
        "project": {"name": f"rlacc{time.time_ns() % 10**9}"},
        "services": {"api": {"urls": [f"http://127.0.0.1:{up_port}"], "timeout": 10.0,
                             "breaker_minimum_calls": 1000}},
        "gateway": {"routes": [{"prefix": "/api/", "service": "api"}],
                    "rate_limit": LIMIT, "rate_window": WINDOW},
    }, tmp_path / "djscale.toml", base=tmp_path)
    assert topology.gateway.rate_limit == LIMIT
    procs: list[ManagedProcess] = [upstream]
    try:
        upstream.start()
        for i in range(PROCESSES):
            proc = _uvicorn(
                f"gateway-{i}", ["--factory", "djscale.services.gateway:create_app", "--http",
                                 "djscale.gateway_server:GatewayHttpProtocol"],
                free_port(), tmp_path / f"gateway-{i}.log",
                {"DJSCALE_TOPOLOGY": str(tmp_path / "djscale.toml"),
                 "DJSCALE_GATEWAY_REDIS_URL": f"redis://{host}:{port}/0"})
            procs.append(proc)
            proc.start()
        for proc in procs:
            proc.wait_ready(lambda p=proc: http_ok("127.0.0.1", p.port, "/"),  # type: ignore[misc]
                            60)
        yield [f"http://127.0.0.1:{p.port}" for p in procs[1:]]
    finally:
        for proc in procs:
            proc.stop()


async def _hammer(urls: list[str]) -> list[tuple[float, float, int]]:
    """Send as fast as 4 loops per gateway can for SECONDS: (sent, answered, status)."""
    seen: list[tuple[float, float, int]] = []
    stop = time.monotonic() + SECONDS

    async def loop(client: httpx.AsyncClient, url: str) -> None:
        while time.monotonic() < stop:
            sent = time.monotonic()
            r = await client.get(f"{url}/api/x", headers={"X-Forwarded-For": CLIENT})
            seen.append((sent, time.monotonic(), r.status_code))

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(loop(client, url) for url in urls for _ in range(4)))
    return seen


def test_admissions_across_4_gateway_processes_stay_within_the_documented_bound(
        gateways: list[str]) -> None:
    seen = asyncio.run(_hammer(gateways))
    assert {status for _, _, status in seen} <= {200, 429}
    admitted = sorted((sent, answered) for sent, answered, status in seen if status == 200)
    refused = sum(1 for *_, status in seen if status == 429)
    assert refused > 2 * len(admitted), "the client did not ask faster than the limit"

    # Over: no window-long interval holds more than LIMIT admissions.
    worst = max(sum(1 for s, a in admitted if s >= start and a <= start + WINDOW)
                for start, _ in admitted)
    assert worst <= LIMIT, (worst, LIMIT)

    # Under: LIMIT per (buckets + 1) buckets of demand (from the first admitted request
    # to the last one sent), less a batch per process.
    width = WINDOW / BUCKETS
    demand = max(sent for sent, _, _ in seen) - admitted[0][0]
    periods = int(demand / (width * (BUCKETS + 1)))
    floor = LIMIT * periods - PROCESSES * LeasedRateLimiter.batch_cap(LIMIT)
    print(f"admitted {len(admitted)} of {len(seen)} in {demand:.2f}s (limit {LIMIT}/s); "
          f"worst 1 s interval {worst}; lower bound {floor}")
    assert len(admitted) >= floor, (len(admitted), floor)
