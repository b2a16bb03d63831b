"""The example shop end to end, through its gateway, on real services.

Three services (each its own local cluster: PostgreSQL primary/replicas/shards, Redis,
gunicorn, a load balancer) and the API gateway. A user's deletion travels
users shard -> outbox -> relay -> broker (the orders service's Redis) -> Celery worker ->
orders shard; it must archive the user's orders exactly once even when the broker, the
relay or the worker is down at the time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parents[2] / "examples/shop"
sys.path.insert(0, str(SHOP))

import shopctl  # noqa: E402

from djscale.cluster.supervisor import wait_until  # noqa: E402

pytestmark = pytest.mark.integration
CONSUMER = "orders.archive_orders_of_deleted_user"


call = shopctl.call
rows = shopctl.sql


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[shopctl.Shop]:
    state = tmp_path_factory.mktemp("shop")
    booted = shopctl.Shop(state)
    try:
        booted = shopctl.boot(state, parts=("postgres", "redis", "migrate", "app", "lb",
                                            "celery", "gateway"))
        products = booted.clusters["products"]
        rows(products, "pg-default", "INSERT INTO products_category (slug, name) "
                                     "VALUES ('books', 'Books')")
        staff = shopctl.staff_token()
        for i in range(3):
            status, body = call("POST", f"{booted.url()}/api/products/",
                                {"category": "books", "name": f"book {i}",
                                 "price_cents": 1000 + i}, staff)
            assert status == 201, body
        yield booted
    finally:
        booted.down(purge=True)


def new_user_with_orders(shop: shopctl.Shop, email: str, n: int = 2) -> tuple[int, str]:
    gw = shop.url()
    status, user = call("POST", f"{gw}/api/users/", {"email": email, "name": "Test"})
    assert status == 201, user
    for i in range(n):
        status, order = call("POST", f"{gw}/api/orders/", {"product_id": 1 + i, "quantity": 1},
                             user["token"])
        assert status == 201, order
        assert order["user_id"] == user["id"]
    return user["id"], user["token"]


def order_statuses(shop: shopctl.Shop, user_id: int, token: str) -> list[str]:
    status, body = call("GET", f"{shop.url()}/api/orders/?user={user_id}", token=token)
    assert status == 200, body
    return [o["status"] for o in body["results"]]


def wait_archived(shop: shopctl.Shop, user_id: int, token: str, timeout: float = 60) -> None:
    def archived() -> bool:
        statuses = order_statuses(shop, user_id, token)
        return bool(statuses) and all(s == "archived" for s in statuses)

    if not wait_until(archived, timeout, interval=0.3):
        raise AssertionError(
            f"orders of user {user_id} still {order_statuses(shop, user_id, token)}")


def inbox_count(shop: shopctl.Shop) -> int:
    orders = shop.clusters["orders"]
    return sum(rows(orders, name, "SELECT count(*) FROM djscale_inbox "
                                  f"WHERE consumer = '{CONSUMER}'")[0][0]
               for name in ("pg-shard1", "pg-shard2"))


def pending_events(shop: shopctl.Shop, *, tried: bool = False) -> int:
    """Events not yet published (``tried``: only those the relay failed to publish)."""
    users = shop.clusters["users"]
    query = "SELECT count(*) FROM djscale_outbox WHERE published_at IS NULL"
    if tried:
        query += " AND attempts > 0"
    return sum(rows(users, name, query)[0][0] for name in ("pg-shard1", "pg-shard2"))


def test_gateway_routes_validates_and_enforces_tokens(shop: shopctl.Shop) -> None:
    gw = shop.url()
    assert call("GET", f"{gw}/admin/")[0] == 404
    status, body = call("POST", f"{gw}/api/users/", {"email": "not-an-email", "name": ""})
    assert status == 400
    assert set(body["fields"]) == {"email", "name"}
    assert call("POST", f"{gw}/api/users/", ["a", "list"])[0] == 400
    user_id, token = new_user_with_orders(shop, "routes@shop.example", n=1)
    _other_id, other_token = new_user_with_orders(shop, "other@shop.example", n=1)
    assert call("GET", f"{gw}/api/users/{user_id}")[0] == 401
    assert call("GET", f"{gw}/api/users/{user_id}", token=other_token)[0] == 403
    status, profile = call("GET", f"{gw}/api/profile/{user_id}", token=token)
    assert status == 200
    assert profile["data"]["user"]["id"] == user_id
    assert len(profile["data"]["orders"]["results"]) == 1
    status, body = call("POST", f"{gw}/api/orders/", {"product_id": 999, "quantity": 1}, token)
    assert status == 400
    assert "product_id" in body["fields"]


def test_deleted_users_orders_are_archived_exactly_once_through_faults(
        shop: shopctl.Shop) -> None:
    gw = shop.url()
    orders, users = shop.clusters["orders"], shop.clusters["users"]
    before = inbox_count(shop)

    # 1. The broker is down when the user is deleted: the event waits in the outbox.
    uid1, tok1 = new_user_with_orders(shop, "broker-down@shop.example")
    orders.stop_service("redis")
    try:
        assert call("DELETE", f"{gw}/api/users/{uid1}", token=tok1)[0] == 200
        # The relay tried to publish it, the broker refused: it waits in the outbox.
        assert wait_until(lambda: pending_events(shop, tried=True) >= 1, 30)
    finally:
        orders.start_service("redis")
    wait_archived(shop, uid1, tok1)

    # 2. The relay is killed, the user deleted, the relay restarted.
    uid2, tok2 = new_user_with_orders(shop, "relay-down@shop.example")
    users.stop_service("relay", crash=True)
    try:
        assert call("DELETE", f"{gw}/api/users/{uid2}", token=tok2)[0] == 200
        assert set(order_statuses(shop, uid2, tok2)) == {"placed"}
        assert pending_events(shop) >= 1
    finally:
        users.start_service("relay")
    wait_archived(shop, uid2, tok2)

    # 3. The worker is killed, the user deleted, the worker restarted.
    uid3, tok3 = new_user_with_orders(shop, "worker-down@shop.example")
    orders.stop_service("celery-1", crash=True)
    try:
        assert call("DELETE", f"{gw}/api/users/{uid3}", token=tok3)[0] == 200
        # The relay published the event; with no worker nobody consumes it.
        assert wait_until(lambda: pending_events(shop) == 0, 30)
        assert set(order_statuses(shop, uid3, tok3)) == {"placed"}
    finally:
        orders.start_service("celery-1")
    wait_archived(shop, uid3, tok3)

    # Exactly once: one inbox row per deleted user, nothing left in the outbox.
    assert inbox_count(shop) - before == 3
    assert pending_events(shop) == 0
    assert call("GET", f"{gw}/api/users/{uid1}", token=tok1)[0] == 404


def test_writes_read_what_they_change_on_the_primary(shop: shopctl.Shop) -> None:
    """A PATCH keeps a change committed just before it, and a POST finds a category created
    just before it, while both replicas lag (replay paused, under ``max_lag_seconds``, so
    reads still go there): each reads on the primary what it writes against.

    Through the gateway: each answer waits (``EDGE["WAIT_FOR_REPLICAS"]``, 2 s) for the
    paused replicas before purging, longer than the products route gives a read (2 s),
    within what it gives a write (``write_timeout``, 5 s).
    """
    base, staff = shop.url(), shopctl.staff_token()
    products = shop.clusters["products"]
    status, created = call("POST", f"{base}/api/products/",
                           {"category": "books", "name": "paused", "price_cents": 100}, staff)
    assert status == 201, created
    pid = created["id"]
    replicas = ("pg-default-replica1", "pg-default-replica2")
    assert wait_until(lambda: all(rows(products, r, "SELECT count(*) FROM products_product "
                                                    f"WHERE id = {pid}")[0][0]
                                  for r in replicas), 10, interval=0.05)
    for replica in replicas:
        rows(products, replica, "SELECT pg_wal_replay_pause()")
    try:
        # Committed by "another request" the replicas have not replayed.
        rows(products, "pg-default", f"UPDATE products_product SET name = 'renamed' "
                                     f"WHERE id = {pid}")
        rows(products, "pg-default",
             "INSERT INTO products_category (slug, name) VALUES ('games', 'Games')")
        with ThreadPoolExecutor(2) as pool:  # both read at once, before the lag grows
            patched = pool.submit(call, "PATCH", f"{base}/api/products/{pid}",
                                  {"price_cents": 4321}, staff)
            posted = pool.submit(call, "POST", f"{base}/api/products/",
                                 {"category": "games", "name": "new", "price_cents": 1}, staff)
            assert patched.result()[0] == 200, patched.result()
            assert posted.result()[0] == 201, posted.result()
    finally:
        for replica in replicas:
            rows(products, replica, "SELECT pg_wal_replay_resume()")
    assert rows(products, "pg-default", "SELECT name, price_cents FROM products_product "
                                        f"WHERE id = {pid}") == [("renamed", 4321)]
