"""Gateway: the shop's products endpoint direct, through nginx ``proxy_pass``, through the gateway.

The products service of ``examples/shop`` (a primary and two replicas, its Redis, two
gunicorn app servers x 2 workers behind HAProxy) serves ``GET /api/products/categories/``
(a cached, database-backed Django view). In front of its load balancer, side by side:

- a plain nginx ``proxy_pass`` (the local cluster's nginx config: 1 worker, keep-alive
  upstream connections, proxy headers and a request id);
- the djscale gateway as the local cluster runs it (uvicorn on uvloop with
  :class:`~djscale.gateway_server.GatewayHttpProtocol`, ``create_app`` from a topology)
  with its rate limit on (``rate_limit`` far above what a run reaches: every request is
  counted, none refused), with 1 and with 2 uvicorn workers.

``wrk`` (16 connections) measures each in many short rounds, the order rotating from
round to round so that no path always runs after the same one; the rows are medians.
Every process shares the machine's cores with wrk, PostgreSQL and the app servers (and,
on a shared machine, with whatever else runs): what the gateway costs shows as
requests/s the app servers lose. Because requests/s swing with the machine's load, the
notes also give the CPU time per request of the gateway's processes and of the products
service's (gunicorn, HAProxy, PostgreSQL, Redis, from ``/proc``), which load barely moves.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tomllib
from pathlib import Path

from benchmarks.common import ROOT, Context, Result, start_lb, wrk
from djscale.cluster import LocalCluster
from djscale.cluster.lb import Upstream
from djscale.cluster.local import http_ok
from djscale.cluster.supervisor import ManagedProcess, free_port
from djscale.testing import write_topology
from djscale.topology import LoadBalancerSpec

TOPIC = "gateway"
SHOP = ROOT / "examples/shop"
PATH = "/api/products/categories/"


def _tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (processes gone since count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _gateway(ctx: Context, topology: str, redis_url: str, workers: int) -> ManagedProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "djscale.services.gateway:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--no-proxy-headers", "--no-access-log", "--log-level", "warning",
           "--http", "djscale.gateway_server:GatewayHttpProtocol"]
    proc = ManagedProcess(name=f"bench-gateway-{workers}w", kind="gateway", port=port, cmd=cmd,
                          log=str(ctx.scratch / f"bench-gateway-{workers}w.log"),
                          env={"DJSCALE_TOPOLOGY": topology,
                               "DJSCALE_GATEWAY_REDIS_URL": redis_url})
    proc.start()
    try:
        proc.wait_ready(lambda: http_ok("127.0.0.1", port, PATH), 60)
    except BaseException:
        proc.stop()
        raise
    return proc


def run(ctx: Context) -> list[Result]:
    """Products endpoint: direct vs nginx proxy_pass vs the gateway (1 and 2 workers)."""
    os.environ.setdefault("SHOP_SECRET_KEY", "shop-demo-secret-not-for-production")
    data = tomllib.loads((SHOP / "products.toml").read_text())
    topo = write_topology(data, ctx.scratch / "products" / "djscale.toml", base=SHOP)
    products = LocalCluster(topo, ctx.scratch / "products")
    procs: list[ManagedProcess] = []
    try:
        products.up(only=("postgres", "redis", "migrate", "app", "lb"))
        products.django_admin("seed_products", "--count", "1000", service="seed-products")
        lb_host, lb_port = products.address("lb")
        redis_host, redis_port = products.address("redis")
        gw = tomllib.loads((SHOP / "gateway.toml").read_text())
        gw["services"] = {"products": {**gw["services"]["products"],
                                       "urls": [f"http://{lb_host}:{lb_port}"]}}
        gw["gateway"]["routes"] = [r for r in gw["gateway"]["routes"]
                                   if r["service"] == "products"]
        gw["gateway"]["compositions"] = []
        gw["gateway"]["rate_limit"] = 10**9
        gw_file = ctx.scratch / "gateway" / "djscale.toml"
        write_topology(gw, gw_file, base=SHOP)
        redis_url = f"redis://{redis_host}:{redis_port}/3"
        procs.append(start_lb(ctx, LoadBalancerSpec(kind="nginx"),
                              [Upstream("products-lb", lb_host, lb_port)], "bench-nginx-proxy"))
        procs.append(_gateway(ctx, str(gw_file), redis_url, 1))
        procs.append(_gateway(ctx, str(gw_file), redis_url, 2))
        urls = {"direct": f"http://{lb_host}:{lb_port}{PATH}",
                "nginx": f"http://127.0.0.1:{procs[0].port}{PATH}",
                "gateway-1w": f"http://127.0.0.1:{procs[1].port}{PATH}",
                "gateway-2w": f"http://127.0.0.1:{procs[2].port}{PATH}"}
        trees = {"direct": _tree([p.pid for p in products.processes() if p.pid]),
                 "nginx": _tree([procs[0].pid]), "gateway-1w": _tree([procs[1].pid]),
                 "gateway-2w": _tree([procs[2].pid])}
        seconds = 2 if ctx.quick else 3
        rounds = 2 if ctx.quick else 10
        for url in urls.values():
            wrk(url, seconds=2, connections=16)  # warm up: caches, pools, leases
        rps: dict[str, list[float]] = {k: [] for k in urls}
        cpu_us: dict[str, list[float]] = {k: [] for k in urls}
        errors = dict.fromkeys(urls, 0)
        keys = list(urls)
        for n in range(rounds):
            for key in keys[n % len(keys):] + keys[:n % len(keys)]:
                before = _cpu(trees[key])
                r = wrk(urls[key], seconds=seconds, connections=16)
                cpu_us[key].append((_cpu(trees[key]) - before) / max(1, r.requests) * 1e6)
                rps[key].append(r.requests_per_second)
                errors[key] += r.errors
    finally:
        for proc in reversed(procs):
            proc.stop()
        products.down(purge=True)
    med = {k: statistics.median(v) for k, v in rps.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
    best = max(("gateway-1w", "gateway-2w"), key=lambda k: med[k])

    def spread(key: str, base: str) -> str:
        ratios = sorted(a / b for a, b in zip(rps[key], rps[base], strict=True))
        return f"{ratios[0]:.2f}-{ratios[-1]:.2f}x"

    common = (f"{rounds} alternating rounds of {seconds}s, wrk 16 connections; errors: "
              + ", ".join(f"{k} {v}" for k, v in errors.items()))
    return [
        Result(TOPIC, f"shop products via the gateway ({best[-2]} uvicorn worker"
               f"{'s' if best[-2] != '1' else ''}, rate limit on) vs direct", med[best],
               med["direct"], "req/s", "straight to the products load balancer",
               target=">= 0.8x", met=med[best] >= 0.8 * med["direct"],
               notes=f"per-round ratio {spread(best, 'direct')}; 1 worker: "
               f"{med['gateway-1w']:,.0f} req/s, 2 workers: {med['gateway-2w']:,.0f} req/s; "
               f"CPU per request: the products service {cpu['direct']:,.0f} us (gunicorn, "
               f"HAProxy, PostgreSQL, Redis), the gateway {cpu['gateway-1w']:.0f} us with 1 "
               f"worker, {cpu['gateway-2w']:.0f} us with 2, nginx {cpu['nginx']:.0f} us; "
               + common),
        Result(TOPIC, f"shop products via the gateway ({best[-2]} worker"
               f"{'s' if best[-2] != '1' else ''}) vs nginx proxy_pass", med[best],
               med["nginx"], "req/s", "nginx proxy_pass to the same load balancer",
               target=">= 0.85x", met=med[best] >= 0.85 * med["nginx"],
               notes=f"per-round ratio {spread(best, 'nginx')}; nginx vs direct "
               f"{med['nginx'] / med['direct']:.2f}x"),
    ]
