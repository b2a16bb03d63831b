"""Settings of the users service: users sharded by user id, a global e-mail directory."""

from shop.settings.base import build

globals().update(build("users", ["djscale.sharding", "djscale.events", "shop.users"]))
