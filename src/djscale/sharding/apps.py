"""Django app configuration of djscale's sharding (``INSTALLED_APPS += ["djscale.sharding"]``)."""

from __future__ import annotations

from django.apps import AppConfig


class ShardingConfig(AppConfig):
    """The shard map table (main database) and the id function (every shard)."""

    name = "djscale.sharding"
    label = "djscale_sharding"
    verbose_name = "djscale sharding"
    default_auto_field = "django.db.models.BigAutoField"
