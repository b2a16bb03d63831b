"""The products app: one invalidation for every layer when the catalogue changes."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _product_tags(product: Any) -> list[str]:
    # The pages that list the product: its category's and the featured list.
    return [f"products.category:{product.category.slug}", "products.featured"]


class ProductsConfig(AppConfig):
    """Registers Product and Category with djscale.edge (cache entries + edge purges)."""

    name = "shop.products"
    label = "products"

    def ready(self) -> None:
        """Connect the invalidation of products and categories."""
        from djscale.edge import register
        from shop.products.models import Category, Product

        register(Product, tags=_product_tags)
        register(Category)
