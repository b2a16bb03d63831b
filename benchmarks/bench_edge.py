"""The Varnish edge: the shop's product and category pages through Varnish vs the same run
without it, and how soon a product update is visible at the edge under load.

One cluster of ``examples/shop/products_edge.toml`` (primary + replica, Redis, 2 gunicorn
app servers x 2 workers, HAProxy, Varnish with xkey) and 2,000 products. ``wrk`` requests
random product pages (70 %) and category pages (30 %) of 500 products and 20 categories,
in alternating rounds through the edge and straight to the load balancer (the app's own
tiered cache serves both). The hit ratio is Varnish's (``varnishstat``) over the edge
rounds only.

Then 200 ``PATCH /api/products/<id>`` through the edge while ``wrk`` keeps the pages hot:
after each write's response a checker reads the product page and its category page
through the edge until both show the new price, then reads each twice more: a stale read
there is an invalidation that failed. The visibility delay is from the write's response
to the sending of the first read that found both pages fresh (the edge was up to date
when that read reached it); how long that read took to answer is reported too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import statistics
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Context, Result, wrk
from djscale.cluster import LocalCluster, varnish

TOPIC = "edge"
SHOP = ROOT / "examples/shop"
TOPOLOGY = SHOP / "products_edge.toml"
PRODUCTS, HOT = 2000, 500  # the seed makes 20 categories, as shopctl.EDGE_LUA asks for


def _get(address: tuple[str, int], path: str, method: str = "GET", body: object = None,
         token: str = "") -> tuple[int, object]:
    conn = http.client.HTTPConnection(*address, timeout=15)
    try:
        headers = {"Host": "localhost"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _price(page: object, pid: int) -> int | None:
    if isinstance(page, dict) and "results" in page:
        found = [p["price_cents"] for p in page["results"] if p["id"] == pid]
        return int(found[0]) if found else None
    return int(page["price_cents"]) if isinstance(page, dict) else None


@contextlib.contextmanager
def _shopctl() -> Iterator[Any]:
    """The example shop's control module (examples/shop/shopctl.py), with the shop on
    ``sys.path`` while it is used (``staff_token()`` imports the shop's own modules)."""
    sys.path.insert(0, str(SHOP))
    try:
        import shopctl
        yield shopctl
    finally:
        sys.path.remove(str(SHOP))


def _staff_token() -> str:
    with _shopctl() as shopctl:
        return str(shopctl.staff_token())


def updates_under_load(cluster: LocalCluster, count: int, *, seconds_hint: int,
                       lua: Path) -> tuple[list[float], list[float], int, int]:
    """``count`` product updates through the edge under wrk.

    Returns the visibility delays, the delays until the fresh read answered, how many
    updates needed more than one read, and how many reads after that were stale.
    """
    edge = cluster.address("edge")
    token = _staff_token()
    category = {pid: _get(edge, f"/api/products/{pid}")[1]["category"]  # type: ignore[index]
                for pid in range(1, HOT + 1)}
    host, port = edge
    stop = threading.Event()
    load_rps: list[float] = []

    def keep_loading() -> None:  # in rounds, so the load lasts as long as the updates
        while not stop.is_set():
            load_rps.append(wrk(f"http://{host}:{port}/", seconds=seconds_hint, connections=16,
                              script=str(lua)).requests_per_second)

    load = threading.Thread(target=keep_loading)
    load.start()
    delays: list[float] = []
    answered: list[float] = []
    retried = stale = 0
    try:
        for n in range(count):
            pid = random.randint(1, HOT)
            price = 500_000 + n
            status, _ = _get(edge, f"/api/products/{pid}", "PATCH", {"price_cents": price},
                             token)
            if status != 200:
                raise RuntimeError(f"PATCH answered {status}")
            written = time.monotonic()
            pages = (f"/api/products/{pid}", f"/api/products/?category={category[pid]}")
            rounds = 0
            while True:
                rounds += 1
                sent = time.monotonic()
                if all(_price(_get(edge, p)[1], pid) == price for p in pages):
                    break
                if time.monotonic() - written > 10:
                    raise RuntimeError(f"update {n} of product {pid} not visible after 10 s")
                time.sleep(0.001)
            delays.append(sent - written)
            answered.append(time.monotonic() - written)
            retried += rounds > 1
            stale += sum(_price(_get(edge, p)[1], pid) != price for p in pages for _ in range(2))
    finally:
        stop.set()
        load.join()
    print(f"edge: updates under wrk at {statistics.median(load_rps):,.0f} req/s "
          f"(median of {len(load_rps)} rounds)", file=sys.stderr)
    return delays, answered, retried, stale


def run(ctx: Context) -> list[Result]:
    topology = tomllib.loads(TOPOLOGY.read_text())
    cluster = ctx.factory(topology, parts=("postgres", "redis", "migrate", "app", "lb", "edge"),
                          name="edgebench", source=TOPOLOGY)
    cluster.django_admin("seed_products", "--count", str(PRODUCTS), service="seed")
    lua = ctx.scratch / "edge.lua"
    with _shopctl() as shopctl:
        lua.write_text(shopctl.EDGE_LUA.format(hot=HOT))
    urls = {name: "http://{}:{}/".format(*cluster.address(name)) for name in ("edge", "lb")}
    work = cluster.process("edge").data_dir
    seconds = 2 if ctx.quick else 5
    rounds = 1 if ctx.quick else 3
    for url in urls.values():  # warm both: the edge's objects, the app's tiered cache
        wrk(url, seconds=2, connections=16, script=str(lua))
    rps: dict[str, list[float]] = {k: [] for k in urls}
    errors = dict.fromkeys(urls, 0)
    hits = misses = 0
    for _ in range(rounds):
        for name, url in urls.items():
            before = varnish.edge_stats(work)
            r = wrk(url, seconds=seconds, connections=32, script=str(lua))
            rps[name].append(r.requests_per_second)
            errors[name] += r.errors
            if name == "edge":
                after = varnish.edge_stats(work)
                hits += after.hits - before.hits
                misses += after.misses - before.misses
    med = {k: statistics.median(v) for k, v in rps.items()}
    ratio = hits / (hits + misses) if hits + misses else 0.0
    count = 20 if ctx.quick else 200
    delays, answered, retried, stale = updates_under_load(
        cluster, count, seconds_hint=3 if ctx.quick else 5, lua=lua)
    delays.sort()
    answered.sort()
    p50 = delays[len(delays) // 2] * 1000
    worst = delays[-1] * 1000
    return [
        Result(TOPIC, "Varnish -> product + category pages", med["edge"], med["lb"], "req/s",
               "same pages without the edge (HAProxy -> app, tiered cache)",
               target=">= 10x", met=med["edge"] >= 10 * med["lb"],
               notes=f"wrk 32 connections, {rounds} alternating rounds of {seconds} s; "
                     f"{errors['edge']} / {errors['lb']} errors (edge / no edge)"),
        Result(TOPIC, "edge hit ratio under that load", ratio * 100, 100, "%",
               "every lookup a hit", target=">= 95%", met=ratio >= 0.95,
               notes=f"{hits} hits, {misses} misses (varnishstat, edge rounds only)"),
        Result(TOPIC, f"{count} product updates under load: visible at the edge, max",
               worst, 100, "ms", "100 ms", higher_is_better=False, target="<= 100 ms",
               met=worst <= 100 and stale == 0,
               notes=f"from the PATCH's response to the sending of the first read that "
                     f"found the product and its category page fresh through Varnish: p50 "
                     f"{p50:.1f} ms, max {worst:.1f} ms, {retried} of {count} needed more "
                     f"than one read; that read answered after p50 "
                     f"{answered[len(answered) // 2] * 1000:.0f} ms, max "
                     f"{answered[-1] * 1000:.0f} ms (its own latency under wrk); "
                     f"{stale} stale reads after that point (2 more reads of each page per "
                     "update)"),
    ]
