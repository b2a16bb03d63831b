"""The Varnish edge on real processes: the shop's products service and the demo behind it.

Two clusters, each booted once for the module: the products service of the example shop
(``examples/shop/products_edge.toml``: primary + replica, Redis, 2 app servers, HAProxy,
Varnish) and the demo project with the same edge. Every test leaves them running.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from djscale.cluster import LocalCluster, varnish
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory
from tests.integration.helpers import logged_in_sessions, url_patterns

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples/shop"
SHOP_TOPOLOGY = SHOP / "products_edge.toml"
DEMO = ROOT / "examples/demo/djscale.toml"

pytestmark = pytest.mark.integration

GRACE = 8
DEMO_TOPOLOGY = {
    "project": {"name": "edgevarnish", "pythonpath": ".", "settings": "demo.settings",
                "wsgi": "demo.wsgi:application"},
    "postgres": {"database": "demo"},
    "redis": {"mode": "single"},
    "app": {"servers": 2, "workers": 2},
    "lb": {"kind": "haproxy", "health_check_interval_ms": 300},
    "edge": {"kind": "varnish", "public_paths": ["^/catalog$", "^/welcome$"],
             "grace_seconds": GRACE, "probe_interval_ms": 300},
}
PRODUCTS = 40


class Answer:
    """One HTTP response as the tests look at it."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def cache(self) -> str:
        """Varnish's verdict: HIT, MISS or PASS."""
        return self.headers.get("X-Cache", "")

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def get(cluster: LocalCluster, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: Any = None) -> Answer:
    """One request to the cluster's edge."""
    host, port = cluster.address("edge")
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Host": "localhost", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def shop(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    topology = tomllib.loads(SHOP_TOPOLOGY.read_text())
    cluster = djscale_cluster_factory(topology, parts=("postgres", "redis", "migrate", "app",
                                                       "lb", "edge"),
                                      name="shop-edge", source=SHOP_TOPOLOGY)
    cluster.django_admin("seed_products", "--count", str(PRODUCTS), service="seed")
    return cluster


@pytest.fixture(scope="module")
def demo(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    return djscale_cluster_factory(DEMO_TOPOLOGY, parts=("postgres", "redis", "migrate", "app",
                                                         "lb", "edge"),
                                   name="demo-edge", source=DEMO)


def _shop_token(user_id: int, *, staff: bool = False) -> str:
    sys.path.insert(0, str(SHOP))
    try:
        from shop.api import issue_token
        from shopctl import SECRET
    finally:
        sys.path.remove(str(SHOP))
    return str(issue_token(user_id, staff=staff, key=SECRET))


# --------------------------------------------------------------------------- basics


def test_public_pages_are_shared_and_tags_never_reach_the_client(shop: LocalCluster) -> None:
    first = get(shop, "/api/products/3")
    again = get(shop, "/api/products/3", {"Cookie": "_ga=GA1.2.345; theme=dark"})
    assert first.status == again.status == 200
    assert again.cache == "HIT", again.headers
    for answer in (first, again):
        for header in ("Surrogate-Key", "Cache-Tag", "xkey", "X-Djscale-Swr"):
            assert answer.headers.get(header) is None, header
    bearer = get(shop, "/api/products/3", {"Authorization": f"Bearer {_shop_token(7)}"})
    assert bearer.status == 200 and bearer.cache == "PASS"
    assert "private" in bearer.headers["Cache-Control"]
    row = next(s for s in shop.status() if s.name == "edge")
    assert row.healthy and "hit ratio" in row.detail, row


def test_status_the_dashboard_and_its_metrics_show_the_edge(shop: LocalCluster) -> None:
    from djscale.cluster.dashboard import Collector, edge_metrics

    for _ in range(3):
        get(shop, "/api/products/5")
    assert get(shop, "/", {"xkey-purge": "nothing.here"}, method="PURGE").status == 200
    row = next(s for s in shop.status() if s.name == "edge")
    assert re.search(r"hit ratio \d+\.\d%", row.detail) and " purges" in row.detail, row
    collector = Collector(state_dir=shop.state_dir)
    try:
        edges = collector.collect()["edges"]
    finally:
        collector.close()
    assert [e["name"] for e in edges] == ["edge"]
    edge = edges[0]
    assert edge["health"] == "healthy" and edge["hits"] >= 2 and edge["purges"] >= 1
    assert 0 < edge["hit_ratio"] <= 1
    text = edge_metrics(edges)
    assert f'djscale_edge_cache_hits_total{{edge="edge"}} {edge["hits"]}' in text
    assert f'djscale_edge_cache_purges_total{{edge="edge"}} {edge["purges"]}' in text


# --------------------------------------------------------------------------- (b)


def _price(answer: Answer, product_id: int) -> int | None:
    data = answer.json()
    if "results" in data:
        found = [p["price_cents"] for p in data["results"] if p["id"] == product_id]
        return found[0] if found else None
    return int(data["price_cents"])


def _visible(shop: LocalCluster, pages: tuple[str, ...], pid: int, price: int,
             timeout: float = 10) -> tuple[float, float, int]:
    """Read ``pages`` through the edge until all show ``price``.

    Returns (when the first read that found every page fresh was sent, when it was
    answered, how many rounds it took): the edge was up to date when that read reached it.
    """
    deadline = time.monotonic() + timeout
    rounds = 0
    while True:
        rounds += 1
        sent = time.monotonic()
        if all(_price(get(shop, p), pid) == price for p in pages):
            return sent, time.monotonic(), rounds
        assert time.monotonic() < deadline, f"product {pid} not fresh after {timeout} s"
        time.sleep(0.002)


def test_every_product_update_is_visible_at_the_edge_and_never_stale_after(
        shop: LocalCluster) -> None:
    staff = {"Authorization": f"Bearer {_shop_token(0, staff=True)}"}
    categories = {p["id"]: p["category"] for p in
                  (get(shop, f"/api/products/{i}").json() for i in range(1, PRODUCTS + 1))}
    # Under load: readers keep every product and category page hot at the edge, and
    # record what they saw and when they asked.
    seen: list[tuple[float, int, str, int | None, str]] = []  # ..., X-Cache
    stop = threading.Event()

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            pid = rnd.randint(1, PRODUCTS)
            path = (f"/api/products/{pid}" if rnd.random() < 0.5
                    else f"/api/products/?category={categories[pid]}")
            asked = time.monotonic()
            answer = get(shop, path)
            if answer.status == 200:
                seen.append((asked, pid, path, _price(answer, pid), answer.cache))

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    visible_after: list[float] = []  # from the write's response to the fresh read sent
    answered_after: list[float] = []  # ... to that read answered (its own latency included)
    updates: dict[int, list[tuple[float, int]]] = {}  # pid -> [(fresh read sent, price)]
    stale_after = 0
    retried = 0
    written = time.monotonic()  # the last write's response
    try:
        for n in range(200):
            pid = random.randint(1, PRODUCTS - 1)  # the last one: see below
            price = 100_000 + n
            answer = get(shop, f"/api/products/{pid}", staff, method="PATCH",
                         body={"price_cents": price})
            assert answer.status == 200, answer.body
            written = time.monotonic()
            pages = (f"/api/products/{pid}", f"/api/products/?category={categories[pid]}")
            sent, visible, rounds = _visible(shop, pages, pid, price)
            visible_after.append(sent - written)
            answered_after.append(visible - written)
            retried += rounds > 1
            updates.setdefault(pid, []).append((sent, price))
            # The checker: right after, every read of both pages is the new price.
            stale_after += sum(_price(get(shop, p), pid) != price for p in pages for _ in
                               range(2))
    finally:
        stop.set()
        for t in readers:
            t.join()
        _wait_for_repurges(shop, written)
    # The readers: a read asked after an update became visible never shows an older price.
    stale_reads = 0
    stale_seen: list[str] = []  # what each stale read was: which page, which layer answered
    for asked, pid, path, shown, cache in seen:
        done = [(at, p) for at, p in updates.get(pid, []) if at <= asked]
        if done and shown is not None and shown < done[-1][1]:
            stale_reads += 1
            stale_seen.append(f"{path}: {shown} < {done[-1][1]}, asked "
                              f"{(asked - done[-1][0]) * 1000:.1f} ms after it was seen "
                              f"fresh, X-Cache {cache}")
    visible_after.sort()
    answered_after.sort()
    print(_l1_sync_summary(shop))
    print(f"200 updates: fresh at the edge for the first read sent after p50 "
          f"{visible_after[100] * 1000:.1f} ms, max {visible_after[-1] * 1000:.1f} ms "
          f"({retried} needed more than one read; that read answered after p50 "
          f"{answered_after[100] * 1000:.1f} ms, max {answered_after[-1] * 1000:.1f} ms); "
          f"{len(seen)} reads under load, {stale_reads} stale, {stale_after} stale checker "
          "reads")
    assert visible_after[-1] <= 0.1
    assert stale_after == 0
    assert stale_reads == 0, stale_seen


REPURGE_WINDOW = 5 + 0.5
"""Seconds after a write when the app servers purge its tags the last time (the shop's
``L1_TIMEOUT``, the default 5 s, + 0.5 s: :meth:`Invalidator.repurge_delays`)."""


def _wait_for_repurges(cluster: LocalCluster, last_write: float) -> None:
    """Return once the app servers' repurges of the writes until ``last_write`` reached the
    edge: past :data:`REPURGE_WINDOW` and no purge for 1 s. The next test's fetches would
    otherwise overlap them and not be stored (PASS, the VCL's one clock for all tags)."""
    work = cluster.process("edge").data_dir
    last = [varnish.edge_stats(work).purges, time.monotonic()]  # purges, when they changed

    def settled() -> bool:
        purges, now = varnish.edge_stats(work).purges, time.monotonic()
        if purges != last[0]:
            last[:] = [purges, now]
        return now >= last_write + REPURGE_WINDOW and now - last[1] >= 1

    assert wait_until(settled, last_write + 30 - time.monotonic(), interval=0.2), \
        "the app servers kept purging"


def _l1_sync_summary(cluster: LocalCluster) -> str:
    """How long the writers waited for the other processes' L1 (every app server, since boot)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    results: dict[str, float] = {}
    for server in ("app-1", "app-2"):
        host, port = cluster.address(server)
        conn = http.client.HTTPConnection(host, port, timeout=15)
        try:
            conn.request("GET", "/metrics", headers={"Host": "localhost"})
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "djscale_cache_l1_sync_seconds_bucket":
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
                elif sample.name == "djscale_cache_l1_sync_total":
                    result = sample.labels["result"]
                    results[result] = results.get(result, 0.0) + sample.value
    total = buckets.get(float("inf"), 0.0)
    shown = ", ".join(f"<= {le * 1000:g} ms: {int(count)}" for le, count in sorted(buckets.items())
                      if le in (0.001, 0.005, 0.025, 0.1) or le == float("inf"))
    return (f"L1 sync waits (the write waiting for every other process's L1): {int(total)} "
            f"({shown}); results {dict((k, int(v)) for k, v in sorted(results.items()))}")


def _stored_at_edge(shop: LocalCluster, page: str, timeout: float = 10) -> tuple[Answer, float]:
    """Fetch ``page`` until the edge stores it: (the answer it stored, when it was asked).

    A fetch that overlaps a purge of *any* tag is delivered but not stored (``PASS``, the
    VCL's one clock for all tags), and the other tests' writes are still being repurged
    by the app servers (``REPURGE_MS`` and again after ``L1_TIMEOUT`` + 0.5 s): such a
    fetch is asked again.
    """
    fetched: list[tuple[Answer, float]] = []  # (answer, when it was asked), in order

    def stored() -> bool:
        asked = time.monotonic()
        fetched.append((get(shop, page), asked))
        return fetched[-1][0].cache != "PASS"

    assert wait_until(stored, timeout, interval=0.1), [a.headers for a, _ in fetched[-1:]]
    answer, asked = fetched[-1]
    assert answer.cache == "MISS", answer.headers
    assert get(shop, page).cache == "HIT"
    return answer, asked


def test_a_failed_purge_is_logged_and_the_page_is_stale_at_most_its_ttl(
        shop: LocalCluster) -> None:
    """The edge refuses every purge: the write is logged as given up, and the edge serves
    the old page only until its TTL (the product page's max-age=30) runs out."""
    pid = PRODUCTS  # the one product no other test writes (their repurges would
    # remove its page from the edge while this test expects it to stay)
    page = f"/api/products/{pid}"
    assert get(shop, page, method="PURGE").status == 200
    old, fetched = _stored_at_edge(shop, page)  # a copy that lives 30 s from `fetched`
    price = int(old.json()["price_cents"]) + 1
    code = (
        "import dataclasses, logging, sys\n"
        "from djscale import conf\n"
        "from djscale.edge import invalidation as inv\n"
        "from djscale.edge.purge import VarnishPurger\n"
        "from shop.products.models import Product\n"
        "logging.getLogger('djscale.edge').addHandler(logging.StreamHandler(sys.stdout))\n"
        "settings = dataclasses.replace(conf.get().edge, retries=1, repurge_ms=0)\n"
        "inv._invalidator = inv.Invalidator(VarnishPurger(['http://127.0.0.1:9']),\n"
        "                                   settings=settings)\n"
        f"p = Product.objects.get(pk={pid}); p.price_cents = {price}; p.save()\n"
        "print('FLUSHED', inv.flush(30))\n"
    )
    out = shop.django_admin("shell", "-c", code, service="edge-failed-purge")
    assert "FLUSHED True" in out
    assert "edge purge gave up after 2 attempts" in out and f"products.product:{pid}" in out
    # Stale at the edge (the purge never arrived), but only until its TTL runs out.
    deadline = fetched + 30 + 3
    stale: list[Answer] = []
    while True:
        answer = get(shop, page)
        if _price(answer, pid) == price:
            break
        stale.append(answer)
        assert time.monotonic() < deadline, "stale past the page's TTL"
        time.sleep(0.25)
    assert stale, "the edge should have kept the old page (the purge failed)"
    assert all(int(a.headers.get("Age", "0")) <= 30 for a in stale)
    print(f"failed purge: old page served {len(stale)} times, up to Age "
          f"{max(int(a.headers.get('Age', '0')) for a in stale)} s (max-age 30), then fresh")


# --------------------------------------------------------------------------- (c)


def _check_crawl(answers: list[tuple[str, str, Answer]], names: dict[str, str]) -> None:
    """No personal answer from the cache, no cached Set-Cookie, nobody sees another's name."""
    for who, path, answer in answers:
        if answer.cache == "HIT":
            assert "Set-Cookie" not in answer.headers, (who, path)
            assert who.startswith("anon"), (who, path)
        for other, name in names.items():
            if other != who:
                assert name.encode() not in answer.body, (who, path, answer.body[:200])


def test_two_users_and_anonymous_clients_crawl_the_demo_and_never_share(
        demo: LocalCluster) -> None:
    sessions = logged_in_sessions(demo, 'alice-edge', 'bob-edge')
    clients = {
        "alice": {"Cookie": f"sessionid={sessions['alice-edge']}; _ga=GA1.1.1"},
        "bob": {"Cookie": f"_ga=GA1.1.2; sessionid={sessions['bob-edge']}"},
        "bearer": {"Authorization": "Bearer not-a-demo-token"},
        "anon-ga": {"Cookie": "_ga=GA1.2.3; _gid=GA1.2.4"},
        "anon": {},
    }
    urls = url_patterns(demo)
    assert {"/catalog", "/me", "/welcome"} <= set(urls)
    answers: list[tuple[str, str, Answer]] = []
    for _ in range(3):
        order = [(who, url) for who in clients for url in urls]
        random.shuffle(order)
        for who, url in order:
            answers.append((who, url, get(demo, url, clients[who])))
    _check_crawl(answers, {"alice": "alice-edge", "bob": "bob-edge"})
    me = {who: a.json()["user"] for who, url, a in answers if url == "/me" and a.status == 200}
    assert me["alice"] == "alice-edge" and me["bob"] == "bob-edge" and me["anon"] is None
    catalog = [a.cache for who, url, a in answers if url == "/catalog" and who.startswith("anon")]
    assert "HIT" in catalog, catalog
    welcome = [a for _, url, a in answers if url == "/welcome"]
    assert all(a.cache != "HIT" and "Set-Cookie" in a.headers for a in welcome)
    print(f"demo crawl: {len(answers)} requests, {sum(a.cache == 'HIT' for *_, a in answers)} "
          f"hits, 0 shared")


def test_two_users_and_anonymous_clients_crawl_the_shop_and_never_share(
        shop: LocalCluster) -> None:
    clients = {
        "user1": {"Authorization": f"Bearer {_shop_token(1)}"},
        "user2": {"Authorization": f"Bearer {_shop_token(2)}", "Cookie": "_ga=GA1.3.1"},
        "anon-ga": {"Cookie": "_ga=GA1.2.3"},
        "anon": {},
    }
    urls = ["/api/products/", "/api/products/?category=cat-1", "/api/products/categories/",
            "/api/products/openapi.json", "/api/products/999999", "/health/live",
            "/health/ready", "/metrics", *(f"/api/products/{i}" for i in range(1, 6))]
    answers = [(who, url, get(shop, url, clients[who]))
               for _ in range(3) for who in clients for url in urls]
    _check_crawl(answers, {})
    # Never looked up in the cache (PASS), or answered by Varnish itself (/metrics: 404).
    assert all(a.cache in ("PASS", "") for who, _, a in answers if who.startswith("user"))
    hits = [url for who, url, a in answers if who.startswith("anon") and a.cache == "HIT"]
    assert "/api/products/1" in hits and "/api/products/?category=cat-1" in hits, hits
    assert all(a.status == 404 for _, url, a in answers if url == "/metrics")


# --------------------------------------------------------------------------- (d)


def test_an_app_outage_serves_public_pages_from_grace_and_personal_ones_fail(
        demo: LocalCluster) -> None:
    session = logged_in_sessions(demo, 'alice-edge', 'bob-edge')["alice-edge"]
    me = {"Cookie": f"sessionid={session}"}
    assert get(demo, "/me", me).json()["user"] == "alice-edge"  # served while the app is up
    assert wait_until(lambda: get(demo, "/catalog").cache == "HIT", 10)
    page = get(demo, "/catalog").body
    with _stopped(demo):
        work = demo.process("edge").data_dir
        assert wait_until(lambda: varnish.backend_healthy(work) is False, 10)
        started = time.monotonic()
        answers: list[tuple[float, Answer]] = []
        personal: list[Answer] = []

        def past_window() -> bool:
            answer = get(demo, "/catalog", {"Cookie": "_ga=GA1.9.9"})
            answers.append((time.monotonic() - started, answer))
            personal.append(get(demo, "/me", me))
            return answer.status != 200

        assert wait_until(past_window, 5 + GRACE + 10, interval=0.2)
        served = [(t, a) for t, a in answers if a.status == 200]
        # Every answer until the window closed was the cached page, from the cache.
        assert all(a.body == page and a.cache == "HIT" for _, a in served)
        oldest = max(int(a.headers.get("Age", "0")) for _, a in served)
        # Served for the whole window: s-maxage 5 + grace (Age is whole seconds, read
        # every 0.2 s), never past it.
        assert 5 + GRACE - 1 <= oldest <= 5 + GRACE, f"oldest copy served: Age {oldest} s"
        assert answers[-1][1].status == 503
        # The personal page, asked all along: 503 every time, never a cached copy.
        assert personal and all(a.status == 503 and a.cache != "HIT" for a in personal)
        assert all(b"alice-edge" not in a.body for a in personal)
        print(f"outage: public page served from grace for {served[-1][0]:.1f} s, up to Age "
              f"{oldest} s (s-maxage 5 + grace {GRACE}), then 503; personal page 503 "
              f"{len(personal)} times out of {len(personal)}")


class _stopped:
    """Every app server of ``cluster`` stopped inside the block, started again after it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> None:
        for name in ("app-1", "app-2"):
            self.cluster.stop_service(name)

    def __exit__(self, *exc: object) -> None:
        for name in ("app-1", "app-2"):
            self.cluster.start_service(name)
        work = self.cluster.process("edge").data_dir
        assert wait_until(lambda: varnish.backend_healthy(work) is True, 30)
