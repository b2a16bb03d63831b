"""Boot and stop the whole shop: three services, each its own local cluster, and the gateway.

Each service's topology file (``users.toml``, ``products.toml``, ``orders.toml``,
``gateway.toml``) is completed with the addresses known only at start (the load balancers
the orders service and the gateway call) and written under the state folder, then booted
with :class:`djscale.cluster.LocalCluster`. The orders service's Redis is the event bus
every service publishes to (``celery.broker`` of the composed topologies).
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from djscale.cluster import PARTS, LocalCluster
from djscale.errors import ClusterError, DjscaleError
from djscale.testing import write_topology

SHOP_DIR = Path(__file__).resolve().parent
SERVICES = ("products", "orders", "users")
SECRET = os.environ.setdefault("SHOP_SECRET_KEY", "shop-demo-secret-not-for-production")


@dataclass
class Shop:
    """The running shop: one local cluster per service plus the gateway's."""

    state_dir: Path
    clusters: dict[str, LocalCluster] = field(default_factory=dict)

    def url(self, name: str = "gateway") -> str:
        """Base URL of the gateway, or of a service's load balancer."""
        cluster = self.clusters[name]
        host, port = cluster.address("gateway" if name == "gateway" else "lb")
        return f"http://{host}:{port}"

    def down(self, *, purge: bool = False) -> None:
        """Stop every cluster of the shop (gateway first), even when one fails to stop."""
        errors = []
        for name in ("gateway", *reversed(SERVICES)):
            if name in self.clusters:
                try:
                    self.clusters[name].down(purge=purge)
                except DjscaleError as exc:
                    errors.append(f"{name}: {exc}")
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if errors:
            raise ClusterError("; ".join(errors))


def _topology(name: str, state_dir: Path, urls: dict[str, str],
              broker: str = "", edge: bool = False) -> LocalCluster:
    data: dict[str, Any] = tomllib.loads((SHOP_DIR / f"{name}.toml").read_text())
    if edge:  # the same Varnish edge as products_edge.toml, in front of this service
        data["edge"] = tomllib.loads((SHOP_DIR / f"{name}_edge.toml").read_text())["edge"]
    for service, spec in data.get("services", {}).items():
        spec["urls"] = [urls[service]]
    if broker:
        data.setdefault("celery", {})["broker"] = broker
    topo = write_topology(data, state_dir / name / "djscale.toml", base=SHOP_DIR)
    return LocalCluster(topo, state_dir / name)


def previous(state_dir: Path) -> Shop:
    """The shop an earlier run left under ``state_dir`` (running or stopped), if any."""
    from djscale.topology import load

    shop = Shop(state_dir)
    for name in (*SERVICES, "gateway"):
        folder = state_dir / name
        if (folder / "cluster.json").exists() and (folder / "djscale.toml").exists():
            shop.clusters[name] = LocalCluster(load(folder / "djscale.toml"), folder)
    return shop


def boot(state_dir: Path, *, parts: tuple[str, ...] = PARTS, shop: Shop | None = None,
         edge: bool = False) -> Shop:
    """Boot products, orders, users and the gateway (in that order) under ``state_dir``.

    ``parts`` limits what each service cluster starts (e.g. no dashboard in tests). Each
    cluster is added to ``shop`` (a new one by default) before it starts, so a caller
    holding ``shop`` can stop what did start when a later cluster fails. ``edge`` puts
    the Varnish edge of ``products_edge.toml`` in front of the products service (the
    gateway still calls its load balancer).
    """
    shop = shop if shop is not None else Shop(state_dir)
    urls: dict[str, str] = {}
    broker = ""
    for name in SERVICES:
        cluster = _topology(name, state_dir, urls, broker, edge=edge and name == "products")
        shop.clusters[name] = cluster
        cluster.up(only=parts)
        urls[name] = shop.url(name)
        if name == "orders":
            host, port = cluster.address("redis")
            broker = f"redis://{host}:{port}/1"
    gateway = _topology("gateway", state_dir, urls)
    shop.clusters["gateway"] = gateway
    gateway.up(only=("redis", "gateway"))
    return shop


def staff_token() -> str:
    """A staff token signed with the shop's shared key (for seeding the catalogue)."""
    from shop.api import issue_token

    return issue_token(0, staff=True, key=SECRET)


def call(method: str, url: str, data: Any = None, token: str = "") -> tuple[int, Any]:
    """One JSON request to the shop; returns (status, decoded body), errors included."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=json.dumps(data).encode() if data is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def sql(cluster: LocalCluster, service: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of a query on one PostgreSQL server of a service's cluster ([] for no rows)."""
    host, port = cluster.address(service)
    topo = cluster.topology.postgres
    with psycopg.connect(host=host, port=port, user=topo.user, dbname=topo.database,
                         autocommit=True) as conn:
        cur = conn.execute(query.encode())
        return list(cur.fetchall()) if cur.description else []


def wrk_load(base: str, *, seconds: int, products: int, users: int, token: str,
             progress: Any = None, window: int = 10) -> Any:
    """Mixed load through the gateway with wrk (``load.lua``), in ``window``-second steps.

    Returns the totals; p50 is the median of the windows' p50, p99 the worst window's.
    """
    import statistics
    import sys
    from dataclasses import replace

    sys.path.insert(0, str(SHOP_DIR.parent.parent))
    from benchmarks.common import WrkResult, wrk

    env = {"SHOP_PRODUCTS": str(products), "SHOP_USERS": str(users), "SHOP_TOKEN": token}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    windows: list[WrkResult] = []
    try:
        done = 0
        while done < seconds:
            step = min(window, seconds - done)
            windows.append(wrk(f"{base}/api/products/", seconds=step, connections=16,
                               script=str(SHOP_DIR / "load.lua")))
            done += step
            if progress:
                bar = "#" * (20 * done // seconds)
                w = windows[-1]
                progress(f"   [{bar:<20}] {done:>3}s  {w.requests_per_second:7,.0f} req/s  "
                         f"p99 {w.p99_ms:6.1f} ms  errors {w.errors}")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    total = sum(w.requests for w in windows)
    return replace(windows[0], requests=total, requests_per_second=total / max(1, seconds),
                   p50_ms=statistics.median(w.p50_ms for w in windows),
                   p99_ms=max(w.p99_ms for w in windows),
                   errors=sum(w.errors for w in windows))


EDGE_LUA = """
request = function()
  if math.random() < 0.7 then
    return wrk.format("GET", "/api/products/" .. math.random(1, {hot}))
  end
  return wrk.format("GET", "/api/products/?category=cat-" .. math.random(0, 19))
end
"""


@dataclass
class EdgeRun:
    """Anonymous product and category pages, through the edge and without it."""

    edge: Any
    """wrk's result through Varnish."""
    lb: Any
    """wrk's result straight to the load balancer."""
    hits: int
    misses: int


def edge_compare(cluster: LocalCluster, *, seconds: int, hot: int = 500) -> EdgeRun:
    """``seconds`` of wrk on ``hot`` product pages and the category pages, through the
    edge and then straight to the load balancer (each warmed first), with Varnish's
    hits and misses of the edge run."""
    import sys
    import tempfile

    sys.path.insert(0, str(SHOP_DIR.parent.parent))
    from benchmarks.common import wrk

    from djscale.cluster import varnish

    work = cluster.process("edge").data_dir
    urls = {name: "http://{}:{}/".format(*cluster.address(name)) for name in ("edge", "lb")}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(EDGE_LUA.format(hot=hot))
        lua.flush()
        for url in urls.values():
            wrk(url, seconds=2, connections=16, script=lua.name)
        before = varnish.edge_stats(work)
        through = wrk(urls["edge"], seconds=seconds, connections=32, script=lua.name)
        after = varnish.edge_stats(work)
        direct = wrk(urls["lb"], seconds=seconds, connections=32, script=lua.name)
    return EdgeRun(through, direct, after.hits - before.hits, after.misses - before.misses)


def get_with_headers(url: str, token: str = "") -> tuple[int, Any, dict[str, str]]:
    """GET ``url``: (status, decoded JSON body, response headers)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def cache_stats(cluster: LocalCluster) -> dict[tuple[str, str], float]:
    """``djscale_cache_requests`` by (level, result), summed over the app servers' /metrics."""
    import re

    totals: dict[tuple[str, str], float] = {}
    pattern = re.compile(r'^djscale_cache_requests_total\{level="(\w+)",result="(\w+)"\}'
                         r"\s+([0-9.e+]+)", re.M)
    for proc in cluster.processes():
        if proc.kind != "gunicorn":
            continue
        try:
            with urllib.request.urlopen(f"http://{proc.host}:{proc.port}/metrics",
                                        timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for level, result, value in pattern.findall(text):
            totals[(level, result)] = totals.get((level, result), 0.0) + float(value)
    return totals
