"""Settings of the orders service: orders sharded by user id, consumer of user events."""

from shop.settings.base import build

globals().update(build("orders", ["djscale.sharding", "djscale.events", "shop.orders"]))
