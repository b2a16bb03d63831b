"""``make demo``: the example shop on a real local cluster, end to end.

Boots the products, orders and users services (each its own PostgreSQL databases, Redis,
gunicorn app servers and load balancer) and the API gateway; seeds a catalogue, users and
orders through the gateway; warms the cache; drives a bounded burst of reads; deletes a user
and follows the ``user_deleted`` event until that user's orders are archived; prints what
answered where; then stops everything.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shopctl  # noqa: E402 - needs the path above

from djscale.errors import DjscaleError  # noqa: E402

ROOT = HERE.parent.parent
CATEGORIES = ["books", "games", "music", "garden", "kitchen"]


CALLS: collections.Counter[str] = collections.Counter()


def call(method: str, url: str, data: dict[str, Any] | None = None,
         token: str = "", expect: tuple[int, ...] = (200, 201)) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body) and counts unexpected answers."""
    status, body = shopctl.call(method, url, data, token)
    CALLS["requests"] += 1
    if status not in expect:
        CALLS["errors"] += 1
        print(f"   unexpected {status} for {method} {url}: {body}", file=sys.stderr)
    return status, body


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--reads", type=int, default=600)
    parser.add_argument("--keep", action="store_true", help="leave the shop running")
    args = parser.parse_args()

    heading("booting the shop: products, orders, users services and the API gateway")
    started = time.monotonic()
    state = ROOT / ".djscale" / "shop"
    shop = shopctl.Shop(state)
    try:
        shop = shopctl.boot(state)
        print(f"   ready in {time.monotonic() - started:.0f}s")
        for name, cluster in shop.clusters.items():
            rows = cluster.status()
            print(f"   {name:<9} " + ", ".join(
                f"{r.name}{'' if r.healthy else ' (UNHEALTHY)'}" for r in rows))
        gw = shop.url()
        print(f"   gateway: {gw}/api/...   dashboards: " + ", ".join(
            f"{n} http://{c.address('dashboard')[0]}:{c.address('dashboard')[1]}/"
            for n, c in shop.clusters.items() if "dashboard" in c.state.services))
        staff = shopctl.staff_token()

        heading("seeding the catalogue through the gateway (staff token)")
        products_db = shop.clusters["products"]
        for i, slug in enumerate(CATEGORIES):
            shopctl.sql(products_db, "pg-default",
                f"INSERT INTO products_category (slug, name) VALUES ('{slug}', "
                f"'{slug.title()}') ON CONFLICT DO NOTHING")
            for j in range(8):
                status, _ = call("POST", f"{gw}/api/products/",
                                 {"category": slug, "name": f"{slug} item {j}",
                                  "price_cents": 500 + 100 * j, "featured": j < 2}, staff)
                assert status == 201, status
            print(f"   {slug:<8} 8 products" + (" (2 featured)" if i >= 0 else ""))
        status, body = call("POST", f"{gw}/api/products/", {"category": "books"}, staff,
                            expect=(400,))
        print(f"   an invalid product is refused: {status} {body['fields']}")
        out = products_db.django_admin("warm_cache", service="warm-cache")
        print("   cache warmed: " + " ".join(out.split()[-6:]))

        heading(f"creating {args.users} users and their orders through the gateway")
        tokens: dict[int, str] = {}
        shards: collections.Counter[str] = collections.Counter()
        for i in range(args.users):
            status, body = call("POST", f"{gw}/api/users/",
                                {"email": f"user{i}@shop.example", "name": f"User {i}"})
            assert status == 201, (status, body)
            tokens[body["id"]] = body["token"]
            shards[f"users/{body['shard']}"] += 1
        order_shards: collections.Counter[str] = collections.Counter()
        for n, token in enumerate(tokens.values()):
            for k in range(1 + n % 4):
                status, body = call("POST", f"{gw}/api/orders/",
                                    {"product_id": 1 + (n + k) % 40, "quantity": 1 + k}, token)
                assert status == 201, (status, body)
                order_shards[f"orders/{body['shard']}"] += 1
        for key, count in sorted((shards + order_shards).items()):
            print(f"   {key:<15} {count:>4} rows")
        status, body = call("GET", f"{gw}/api/orders/?user={next(iter(tokens))}",
                            expect=(401,))
        print(f"   orders without a token: {status} {body['detail']}")
        status, body = call("GET", f"{gw}/admin/", expect=(404,))
        print(f"   a path the gateway does not route: {status} {body['error']['code']}")

        heading(f"{args.reads} reads through the gateway, 12 at a time")
        uids = list(tokens)
        replica_before = {
            name: shopctl.sql(products_db, name, "SELECT xact_commit FROM pg_stat_database "
                                         "WHERE datname = current_database()")[0][0]
            for name in ("pg-default", "pg-default-replica1", "pg-default-replica2")}

        def read(i: int) -> tuple[str, int, float]:
            kind = ("featured", "product", "category", "profile")[i % 4]
            url = {"featured": f"{gw}/api/products/",
                   "product": f"{gw}/api/products/{1 + i % 40}",
                   "category": f"{gw}/api/products/?category={CATEGORIES[i % 5]}",
                   "profile": f"{gw}/api/profile/{uids[i % len(uids)]}"}[kind]
            t0 = time.monotonic()
            status, _ = call("GET", url, token=tokens[uids[i % len(uids)]]
                             if kind == "profile" else "")
            return kind, status, time.monotonic() - t0

        t0 = time.monotonic()
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(read, range(args.reads)))
        elapsed = time.monotonic() - t0
        by_kind: dict[str, list[float]] = collections.defaultdict(list)
        statuses = collections.Counter(s for _, s, _ in results)
        for kind, _, latency in results:
            by_kind[kind].append(latency * 1000)
        for kind, lat in by_kind.items():
            print(f"   {kind:<9} {len(lat):>4} requests, median {statistics.median(lat):6.1f} ms")
        print(f"   statuses {dict(statuses)}; {len(results) / elapsed:,.0f} req/s "
              "(one Python client, every service on this machine)")
        for name, before in replica_before.items():
            after = shopctl.sql(products_db, name, "SELECT xact_commit FROM pg_stat_database "
                                           "WHERE datname = current_database()")[0][0]
            print(f"   products {name:<20} {after - before:>5} transactions during the reads")
        host, port = products_db.address("redis")
        import redis

        info = redis.Redis(host=host, port=port).info("stats")
        hits, misses = info["keyspace_hits"], info["keyspace_misses"]
        print(f"   products Redis (L2): {hits} hits, {misses} misses "
              f"({100 * hits / max(1, hits + misses):.0f}% hit ratio; L1 hits never reach it)")

        heading("deleting a user: the user_deleted event travels users -> outbox -> "
                "relay -> broker -> orders")
        uid = uids[3]
        status, body = call("DELETE", f"{gw}/api/users/{uid}", token=tokens[uid])
        print(f"   DELETE /api/users/{uid}: {status} {body}")
        deadline = time.monotonic() + 60
        archived: list[Any] = []
        while time.monotonic() < deadline:
            status, body = call("GET", f"{gw}/api/orders/?user={uid}", token=tokens[uid])
            archived = [o["status"] for o in body["results"]]
            if archived and all(s == "archived" for s in archived):
                break
            time.sleep(0.3)
        print(f"   their {len(archived)} orders are now: {collections.Counter(archived)} "
              f"({time.monotonic() - (deadline - 60):.1f}s after the delete)")
        status, _ = call("GET", f"{gw}/api/users/{uid}", token=tokens[uid], expect=(404,))
        print(f"   GET the deleted user: {status}")
        if not (archived and all(s == "archived" for s in archived)):
            CALLS["errors"] += 1
            print("   the deleted user's orders were not archived", file=sys.stderr)
        heading("summary")
        print(f"   {CALLS['requests']} requests through the gateway, "
              f"{CALLS['errors']} errors (deliberate 400/401/404 answers excluded)")
    except (DjscaleError, AssertionError, OSError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            heading("stopping the shop")
            shop.down(purge=True)
            print("   done: no process of the shop is left")
    return 1 if CALLS["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
