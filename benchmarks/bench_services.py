"""Services: what the API gateway hop costs, and how fast an open breaker answers.

Two uvicorn processes (1 worker each): a trivial ASGI upstream, and the djscale gateway
in front of it. ``wrk`` measures requests/s straight to the upstream (baseline) and
through the gateway, in alternating rounds: the ratio is the price of the extra hop
(header rewriting, pooled upstream connection, breaker bookkeeping). Then, through the
same gateway: the latency of a 503 from an open circuit breaker against the latency of a
504 from a slow upstream at a 0.2 s budget: the breaker's reason to exist.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx

# The uvicorn processes import this module for their apps: keep its top-level imports
# light (benchmarks.common pulls in the whole cluster package).
if TYPE_CHECKING:
    from benchmarks.common import Context, Result
    from djscale.cluster.supervisor import ManagedProcess

TOPIC = "services"


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A trivial ASGI upstream; ``/slow`` answers after 1 s."""
    if scope["type"] != "http":
        return
    if scope["path"].startswith("/slow"):
        await asyncio.sleep(1)
    body = b'{"ok": true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def gateway_app() -> Any:
    """The gateway under test (``uvicorn --factory``), upstream from $BENCH_UPSTREAM."""
    from djscale.services.gateway import Gateway
    from djscale.topology import RouteSpec, ServiceSpec

    up = os.environ["BENCH_UPSTREAM"]
    return Gateway(
        services=[ServiceSpec(name="up", urls=(up,), timeout=0.2),
                  ServiceSpec(name="down", urls=(os.environ["BENCH_DOWN"],), retries=0,
                              breaker_minimum_calls=1, breaker_failure_rate=1.0,
                              breaker_reset=600.0)],
        routes=[RouteSpec(prefix="/api/", service="up"), RouteSpec(prefix="/slow", service="up"),
                RouteSpec(prefix="/down/", service="down")])


def _uvicorn(name: str, target: str, port: int, ctx: Context, env: dict[str, str],
             factory: bool = False) -> ManagedProcess:
    from benchmarks.common import ROOT
    from djscale.cluster.supervisor import ManagedProcess, tcp_ready

    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log", "--no-proxy-headers"]
    if factory:
        cmd.append("--factory")
    proc = ManagedProcess(name=name, kind="uvicorn", cmd=cmd, port=port, cwd=str(ROOT),
                          log=str(ctx.scratch / f"{name}.log"),
                          env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", **env})
    proc.start()
    proc.wait_ready(lambda: tcp_ready("127.0.0.1", port), 60)
    return proc


def _latency(url: str, n: int) -> float:
    with httpx.Client(timeout=5) as client:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            client.get(url)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(ctx: Context) -> list[Result]:
    """Gateway hop vs direct (wrk), open-breaker 503 vs slow-upstream 504 latency."""
    from benchmarks.common import Result, wrk
    from djscale.cluster.supervisor import free_port

    up_port, gw_port = free_port(), free_port()
    procs = [_uvicorn("bench-upstream", "benchmarks.bench_services:upstream_app", up_port,
                      ctx, {})]
    try:
        procs.append(_uvicorn(
            "bench-gateway", "benchmarks.bench_services:gateway_app", gw_port, ctx,
            {"BENCH_UPSTREAM": f"http://127.0.0.1:{up_port}",
             "BENCH_DOWN": f"http://127.0.0.1:{free_port()}"}, factory=True))
        seconds = 2 if ctx.quick else 4
        rounds = 1 if ctx.quick else 3
        urls = {"direct": f"http://127.0.0.1:{up_port}/api/x",
                "gateway": f"http://127.0.0.1:{gw_port}/api/x"}
        rps: dict[str, list[float]] = {k: [] for k in urls}
        errors = dict.fromkeys(urls, 0)
        for _ in range(rounds):
            for key, url in urls.items():
                r = wrk(url, seconds=seconds, connections=16)
                rps[key].append(r.requests_per_second)
                errors[key] += r.errors
        gw = f"http://127.0.0.1:{gw_port}"
        httpx.get(f"{gw}/down/x")                   # one failure opens the breaker
        assert httpx.get(f"{gw}/down/x").status_code == 503
        open_s = _latency(f"{gw}/down/x", 50 if ctx.quick else 200)
        slow_s = _latency(f"{gw}/slow", 3 if ctx.quick else 6)
    finally:
        for proc in reversed(procs):
            proc.stop()
    direct, through = statistics.median(rps["direct"]), statistics.median(rps["gateway"])
    return [
        Result(TOPIC, "requests/s through the gateway", through, direct, "req/s",
               "same upstream, direct", notes=f"errors: {errors['gateway']} via gateway, "
               f"{errors['direct']} direct; 1 uvicorn worker each, wrk on the same cores"),
        Result(TOPIC, "503 from an open breaker", open_s * 1000, slow_s * 1000, "ms",
               "504 from a slow upstream at a 0.2 s budget", higher_is_better=False,
               target="far below the budget", met=open_s < 0.05),
    ]
