"""Settings of the products service: primary + replicas, tiered cache, cache warmers."""

from shop.settings.base import build

globals().update(build("products", ["shop.products"]))
DJSCALE = {"CACHE_WARMERS": ["shop.products.warmers"]}
