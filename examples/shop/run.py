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
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shopctl  # noqa: E402 - needs the path above

from djscale.errors import DjscaleError  # noqa: E402

ROOT = HERE.parent.parent


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


def edge_tour(shop: shopctl.Shop, staff: str, seconds: int, products_seeded: int) -> None:
    """The Varnish edge in front of the products service: speed, hit ratio, a price change
    visible at once, and a logged-in read never answered from the cache."""
    products = shop.clusters["products"]
    heading(f"the Varnish edge in front of products: {seconds}s of anonymous product and "
            "category pages with wrk through Varnish, then as long straight to HAProxy")
    run = shopctl.edge_compare(products, seconds=seconds, hot=min(500, products_seeded))
    lookups = max(1, run.hits + run.misses)
    print(f"   through Varnish  {run.edge.requests_per_second:9,.0f} req/s  "
          f"p99 {run.edge.p99_ms:6.1f} ms  errors {run.edge.errors}  "
          f"hit ratio {100 * run.hits / lookups:.2f}% ({run.hits:,} hits, "
          f"{run.misses:,} misses)")
    print(f"   straight to lb   {run.lb.requests_per_second:9,.0f} req/s  "
          f"p99 {run.lb.p99_ms:6.1f} ms  errors {run.lb.errors}  (app servers, tiered cache)")
    ratio = run.edge.requests_per_second / max(1.0, run.lb.requests_per_second)
    print(f"   Varnish answered {ratio:.1f} times as many requests per second")
    CALLS["errors"] += run.edge.errors + run.lb.errors
    edge = "http://{}:{}".format(*products.address("edge"))
    pid = 7
    page = f"{edge}/api/products/{pid}"
    _, before, headers = shopctl.get_with_headers(page)
    _, _, again = shopctl.get_with_headers(page)
    print(f"   GET /api/products/{pid} through Varnish: price {before['price_cents']}, "
          f"{headers.get('X-Cache')} then {again.get('X-Cache')} (Age {again.get('Age')})")
    price = before["price_cents"] + 100
    status, _ = call("PATCH", f"{shop.url()}/api/products/{pid}", {"price_cents": price},
                     staff)
    written = time.monotonic()
    _, after, headers = shopctl.get_with_headers(page)
    _, listing, _ = shopctl.get_with_headers(
        f"{edge}/api/products/?category={before['category']}")
    fresh = after["price_cents"] == price and any(
        p["id"] == pid and p["price_cents"] == price for p in listing["results"])
    print(f"   PATCH its price through the gateway: {status}; the save purged the tags of "
          f"its pages. Through Varnish {1000 * (time.monotonic() - written):.0f} ms later: "
          f"price {after['price_cents']} ({headers.get('X-Cache')}), its category page "
          f"{'shows it too' if fresh else 'IS STALE'}")
    time.sleep(0.2)  # pages begun within RACE_MARGIN of a purge are not stored (no-store)
    seen = [shopctl.get_with_headers(page) for _ in range(2)]
    print("   0.2 s later, twice: " + ", then ".join(
        f"price {body['price_cents']} ({hdrs.get('X-Cache')})" for _, body, hdrs in seen)
        + ": stored again, with the new price")
    if not fresh or any(body["price_cents"] != price for _, body, _ in seen):
        CALLS["errors"] += 1
    status, _, headers = shopctl.get_with_headers(page, token=staff)
    shared = headers.get("X-Cache") == "HIT"
    print(f"   the same page with a bearer token: {status} {headers.get('X-Cache')} "
          f"(a personal request is {'SERVED FROM THE CACHE' if shared else 'never cached'})")
    if shared:
        CALLS["errors"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000, help="users seeded in bulk")
    parser.add_argument("--products", type=int, default=10_000, help="products seeded")
    parser.add_argument("--orders", type=int, default=30_000, help="orders seeded in bulk")
    parser.add_argument("--api-users", type=int, default=12,
                        help="users created one by one through the gateway")
    parser.add_argument("--seconds", type=int, default=60, help="length of the wrk load")
    parser.add_argument("--edge-seconds", type=int, default=5,
                        help="length of each wrk run of the edge tour (0: no Varnish edge)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the shop running (the next run stops and removes it)")
    args = parser.parse_args()

    state = ROOT / ".djscale" / "shop"
    earlier = shopctl.previous(state)
    if earlier.clusters:
        # Seeded rows of an earlier run (kept with --keep, or stopped by hand) would clash
        # with this run's (same e-mails): every run starts from empty databases.
        heading(f"removing the shop an earlier run left in {state} (running or stopped)")
        earlier.down(purge=True)
    heading("booting the shop: products, orders, users services and the API gateway")
    started = time.monotonic()
    shop = shopctl.Shop(state)
    finished = False
    try:
        shopctl.boot(state, shop=shop, edge=args.edge_seconds > 0)
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

        heading(f"seeding {args.products:,} products, {args.users:,} users and "
                f"{args.orders:,} orders in bulk")
        products_db = shop.clusters["products"]
        t0 = time.monotonic()
        for service, command in (
                ("products", ["seed_products", "--count", str(args.products)]),
                ("users", ["seed_users", "--count", str(args.users)]),
                ("orders", ["seed_orders", "--count", str(args.orders), "--users",
                            str(args.users), "--products", str(args.products)])):
            out = shop.clusters[service].django_admin(*command, service=f"seed-{service}")
            print("   " + next((ln for ln in reversed(out.splitlines())
                                if ln.startswith(f"{service}:")), f"{service}: seeded"))
        print(f"   seeded in {time.monotonic() - t0:.0f}s")
        status, body = call("POST", f"{gw}/api/products/",
                            {"category": "cat-1", "name": "Through the gateway",
                             "price_cents": 1999, "featured": True}, staff)
        print(f"   a product added through the gateway (staff token): {status}")
        status, body = call("POST", f"{gw}/api/products/", {"category": "cat-1"}, staff,
                            expect=(400,))
        print(f"   an invalid product is refused: {status} {body['fields']}")
        out = products_db.django_admin("warm_cache", service="warm-cache")
        warmed = [ln.split(":")[0].strip() for ln in out.splitlines() if "done" in ln]
        print(f"   cache warmed by the registered warmers: {', '.join(dict.fromkeys(warmed))}")

        heading(f"creating {args.api_users} users and their orders through the gateway")
        tokens: dict[int, str] = {}
        shards: collections.Counter[str] = collections.Counter()
        for i in range(args.api_users):
            status, body = call("POST", f"{gw}/api/users/",
                                {"email": f"user{i}@shop.example", "name": f"User {i}"})
            assert status == 201, (status, body)
            tokens[body["id"]] = body["token"]
            shards[f"users/{body['shard']}"] += 1
        order_shards: collections.Counter[str] = collections.Counter()
        for n, token in enumerate(tokens.values()):
            for k in range(1 + n % 4):
                status, body = call("POST", f"{gw}/api/orders/",
                                    {"product_id": 1 + (n + k) % 400, "quantity": 1 + k}, token)
                assert status == 201, (status, body)
                order_shards[f"orders/{body['shard']}"] += 1
        for key, count in sorted((shards + order_shards).items()):
            print(f"   {key:<15} {count:>4} of these rows")
        status, body = call("GET", f"{gw}/api/orders/?user={next(iter(tokens))}",
                            expect=(401,))
        print(f"   orders without a token: {status} {body['detail']}")
        status, body = call("GET", f"{gw}/admin/", expect=(404,))
        print(f"   a path the gateway does not route: {status} {body['error']['code']}")

        heading(f"{args.seconds}s of mixed load through the gateway with wrk "
                "(products, product pages, categories, profiles)")
        replicas = ("pg-default", "pg-default-replica1", "pg-default-replica2")
        xact_sql = ("SELECT xact_commit FROM pg_stat_database "
                    "WHERE datname = current_database()")
        before = {n: shopctl.sql(products_db, n, xact_sql)[0][0] for n in replicas}
        load = shopctl.wrk_load(gw, seconds=args.seconds, products=args.products,
                                users=args.users, token=staff, progress=print)
        after = {n: shopctl.sql(products_db, n, xact_sql)[0][0] for n in replicas}
        served = {n: after[n] - before[n] for n in replicas}
        on_replicas = served["pg-default-replica1"] + served["pg-default-replica2"]
        cache = shopctl.cache_stats(products_db)
        if "edge" in products_db.state.services:
            edge_tour(shop, staff, args.edge_seconds, args.products)
        heading("deleting a user: the user_deleted event travels users -> outbox -> "
                "relay -> broker -> orders")
        uid = list(tokens)[3]
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
        print(f"   load      {load.requests:,} requests in {args.seconds}s: "
              f"{load.requests_per_second:,.0f} req/s, p50 {load.p50_ms:.1f} ms, "
              f"p99 {load.p99_ms:.1f} ms (worst 10 s window), {load.errors} errors")
        for level in ("l1", "l2"):
            hit, miss = cache.get((level, "hit"), 0), cache.get((level, "miss"), 0)
            print(f"   cache {level}  {hit:,.0f} hits, {miss:,.0f} misses: "
                  f"{100 * hit / max(1, hit + miss):.0f}% hit ratio (products app servers)")
        print(f"   replicas  {100 * on_replicas / max(1, sum(served.values())):.0f}% of the "
              f"products database's transactions ran on replicas {served}")
        for service, table in (("users", "users_user"), ("orders", "orders_order")):
            counts = {name: shopctl.sql(shop.clusters[service], name,
                                        f"SELECT count(*) FROM {table}")[0][0]
                      for name in ("pg-shard1", "pg-shard2")}
            print(f"   {service:<9} rows per shard {counts}")
        published = sum(shopctl.sql(shop.clusters["users"], name,
                                    "SELECT count(*) FROM djscale_outbox "
                                    "WHERE published_at IS NOT NULL")[0][0]
                        for name in ("pg-shard1", "pg-shard2"))
        consumed = sum(shopctl.sql(shop.clusters["orders"], name,
                                   "SELECT count(*) FROM djscale_inbox")[0][0]
                       for name in ("pg-shard1", "pg-shard2"))
        print(f"   events    {published} published by users, {consumed} consumed by orders")
        errors = CALLS["errors"] + load.errors
        print(f"   errors    {errors} ({CALLS['requests']} API calls + the wrk load; "
              "deliberate 400/401/404 answers excluded)")
        CALLS["errors"] = errors
        finished = True
    except (DjscaleError, AssertionError, OSError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not finished:
            # Whatever went wrong, nothing the demo started keeps running; the data and
            # logs stay for a look (the next run removes them).
            heading("stopping the shop after an error")
            try:
                shop.down()
                print(f"   done: no process of the shop is left; logs in {state}/*/logs")
            except DjscaleError as exc:
                print(f"demo: error: {exc}", file=sys.stderr)
        elif not args.keep:
            heading("stopping the shop")
            shop.down(purge=True)
            print("   done: no process of the shop is left")
    return 1 if CALLS["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
