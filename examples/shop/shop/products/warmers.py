"""Cache warmers: fill the tiered cache before traffic arrives (``manage.py warm_cache``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from djscale.cache import warmer
from djscale.cache.warmers import warm_call
from shop.products.models import Category, Product
from shop.products.views import categories_list, category_page, featured, product_card


@warmer("featured_products", batch_size=200,
        count=lambda: Product.objects.filter(featured=True).count())
def featured_products() -> Iterator[Any]:
    """The featured list and the card of every featured product."""
    yield warm_call(featured)
    for pk in Product.objects.filter(featured=True).values_list("pk", flat=True).iterator(
            chunk_size=200):
        yield warm_call(product_card, pk)


@warmer("categories")
def categories() -> Iterator[Any]:
    """The category list and the first page of every category."""
    yield warm_call(categories_list)
    for slug in Category.objects.values_list("slug", flat=True).iterator(chunk_size=200):
        yield warm_call(category_page, slug)
