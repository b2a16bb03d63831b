"""``seed_orders --count N --users U --products P``: orders in bulk, each on its user's shard."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.orders.models import Order


class Command(BaseCommand):
    help = "Create orders in bulk for users 1..U and products 1..P."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=20_000)
        parser.add_argument("--users", type=int, required=True)
        parser.add_argument("--products", type=int, required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        users, products = options["users"], options["products"]
        rows = [Order(user_id=1 + (i * 7919) % users, product_id=1 + (i * 104729) % products,
                      quantity=1 + i % 3, total_cents=500 * (1 + i % 3))
                for i in range(options["count"])]
        for start in range(0, len(rows), 5000):
            Order.objects.bulk_create(rows[start:start + 5000])
        self.stdout.write(f"orders: {len(rows)} created")
