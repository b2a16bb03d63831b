"""``seed_products --count N``: a catalogue of N products in 20 categories, in bulk."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.products.models import Category, Product

CATEGORIES = 20


class Command(BaseCommand):
    help = "Create categories and products in bulk (idempotent: tops up to --count)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=10_000)

    def handle(self, *args: Any, **options: Any) -> None:
        cats = [Category.objects.get_or_create(slug=f"cat-{i}",
                                               defaults={"name": f"Category {i}"})[0]
                for i in range(CATEGORIES)]
        have = Product.objects.count()
        Product.objects.bulk_create([
            Product(category=cats[i % CATEGORIES], name=f"Product {i}",
                    price_cents=100 + (i * 37) % 10_000, featured=i % 200 == 0)
            for i in range(have, options["count"])], batch_size=2000)
        self.stdout.write(f"products: {max(have, options['count'])} products in "
                          f"{CATEGORIES} categories")
