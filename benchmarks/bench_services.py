"""Services: what the API gateway hop costs, and how fast an open breaker answers.

Three uvicorn processes (1 worker each, the gateway's HTTP protocol
:class:`djscale.gateway_server.GatewayHttpProtocol`) and a Redis: a trivial ASGI
upstream, the djscale gateway in front of it, and the gateway as it was before issue 17
(``benchmarks/gateway_before.py``: httpx + aiohttp wire, a Redis round trip per request
for the rate limit), both with the rate limit on (a limit no run reaches, so every request
pays for the check and none is refused). ``wrk`` measures requests/s straight to the
upstream (baseline) and through each gateway, in alternating rounds. The CPU time each
gateway process spends per proxied request (from ``/proc``) is steadier than requests/s
on a shared machine: it compares the two implementations. Then, through the gateway: the
latency of a 503 from an open circuit breaker against the latency of a 504 from a slow
upstream at a 0.2 s budget: the breaker's reason to exist.
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


def gateway_app(*, gateway_class: Any = None) -> Any:
    """The gateway under test (``uvicorn --factory``), upstream from $BENCH_UPSTREAM."""
    from djscale.services.gateway import Gateway
    from djscale.topology import RouteSpec, ServiceSpec

    up = os.environ["BENCH_UPSTREAM"]
    return (gateway_class or Gateway)(
        services=[ServiceSpec(name="up", urls=(up,), timeout=0.2),
                  ServiceSpec(name="down", urls=(os.environ["BENCH_DOWN"],), retries=0,
                              breaker_minimum_calls=1, breaker_failure_rate=1.0,
                              breaker_reset=600.0)],
        routes=[RouteSpec(prefix="/api/", service="up"), RouteSpec(prefix="/slow", service="up"),
                RouteSpec(prefix="/down/", service="down")])


def limited_gateway_app() -> Any:
    """The gateway with its rate limit on (tokens leased from $BENCH_REDIS)."""
    from djscale.services.leased_ratelimit import LeasedRateLimiter

    gateway = gateway_app()
    gateway.limiter = LeasedRateLimiter.from_url(os.environ["BENCH_REDIS"], limit=10**9,
                                                 prefix="bench:new:")
    return gateway


def before_gateway_app() -> Any:
    """The gateway before issue 17, rate limit on (a Redis round trip per request)."""
    from benchmarks.gateway_before import Gateway as Before
    from djscale.services.ratelimit import RateLimiter

    gateway = gateway_app(gateway_class=Before)
    gateway.limiter = RateLimiter.from_url(os.environ["BENCH_REDIS"], limit=10**9,
                                           prefix="bench:before:")
    return gateway


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _uvicorn(name: str, target: str, port: int, ctx: Context, env: dict[str, str],
             factory: bool = False) -> ManagedProcess:
    from benchmarks.common import ROOT
    from djscale.cluster.supervisor import ManagedProcess, tcp_ready

    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log", "--no-proxy-headers"]
    if factory:
        cmd += ["--factory", "--http", "djscale.gateway_server:GatewayHttpProtocol"]
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


def _redis(ctx: Context) -> ManagedProcess:
    from djscale.cluster.supervisor import ManagedProcess, free_port, tcp_ready

    port = free_port()
    proc = ManagedProcess(name="bench-redis", kind="redis", port=port,
                          cmd=["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"],
                          log=str(ctx.scratch / "bench-redis.log"))
    proc.start()
    proc.wait_ready(lambda: tcp_ready("127.0.0.1", port), 30)
    return proc


def run(ctx: Context) -> list[Result]:
    """Gateway hop vs direct (wrk), gateway CPU per request now vs before issue 17 (rate
    limit on in both), open-breaker 503 vs slow-upstream 504 latency."""
    from benchmarks.common import Result, wrk
    from djscale.cluster.supervisor import free_port

    up_port, gw_port, old_port = free_port(), free_port(), free_port()
    procs = [_redis(ctx)]
    try:
        procs.append(_uvicorn("bench-upstream", "benchmarks.bench_services:upstream_app",
                              up_port, ctx, {}))
        env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{up_port}",
               "BENCH_DOWN": f"http://127.0.0.1:{free_port()}",
               "BENCH_REDIS": f"redis://127.0.0.1:{procs[0].port}/0"}
        gateway = _uvicorn("bench-gateway", "benchmarks.bench_services:limited_gateway_app",
                           gw_port, ctx, env, factory=True)
        procs.append(gateway)
        old = _uvicorn("bench-gateway-before", "benchmarks.bench_services:before_gateway_app",
                       old_port, ctx, env, factory=True)
        procs.append(old)
        seconds = 2 if ctx.quick else 4
        rounds = 1 if ctx.quick else 5
        urls = {"direct": f"http://127.0.0.1:{up_port}/api/x",
                "gateway": f"http://127.0.0.1:{gw_port}/api/x",
                "before": f"http://127.0.0.1:{old_port}/api/x"}
        pids = {"direct": procs[1].pid, "gateway": gateway.pid, "before": old.pid}
        rps: dict[str, list[float]] = {k: [] for k in urls}
        cpu_us: dict[str, list[float]] = {k: [] for k in urls}
        errors = dict.fromkeys(urls, 0)
        for url in urls.values():
            wrk(url, seconds=1, connections=16)  # warm up: pools, leases, imports
        for _ in range(rounds):
            for key, url in urls.items():
                before = _cpu_seconds(pids[key])
                r = wrk(url, seconds=seconds, connections=16)
                cpu_us[key].append((_cpu_seconds(pids[key]) - before) / max(1, r.requests) * 1e6)
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
    rate = {k: statistics.median(v) for k, v in rps.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
    ratios = sorted(new / old for new, old in zip(cpu_us["gateway"], cpu_us["before"],
                                                  strict=True))
    return [
        Result(TOPIC, "requests/s through the gateway (rate limit on)", rate["gateway"],
               rate["direct"], "req/s", "same upstream, direct",
               notes=f"errors: {errors['gateway']} via gateway, {errors['direct']} direct; "
               f"the gateway before issue 17: {rate['before']:,.0f} req/s, "
               f"{rate['before'] / rate['direct']:.3g}x; 1 uvicorn worker each, wrk (16 "
               "connections) on the same cores; a trivial upstream is the worst case: the "
               "hop costs as much CPU as the upstream itself"),
        Result(TOPIC, "gateway CPU per proxied request (rate limit on)", cpu["gateway"],
               cpu["before"], "us", "the gateway before issue 17 (benchmarks/gateway_before.py)",
               higher_is_better=False, target="<= 0.5x", met=cpu["gateway"] <= 0.5 * cpu["before"],
               notes=f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)} (medians of "
               f"{rounds} alternating rounds); the trivial upstream itself: "
               f"{cpu['direct']:.0f} us per request; errors before: {errors['before']}"),
        Result(TOPIC, "503 from an open breaker", open_s * 1000, slow_s * 1000, "ms",
               "504 from a slow upstream at a 0.2 s budget", higher_is_better=False,
               target="far below the budget", met=open_s < 0.05),
    ]
