"""Django app configuration of djscale's sharding (``INSTALLED_APPS += ["djscale.sharding"]``)."""

from __future__ import annotations

from django.apps import AppConfig


class ShardingConfig(AppConfig):
    """The shard map table (main database) and the id function (every shard)."""

    name = "djscale.sharding"
    label = "djscale_sharding"
    verbose_name = "djscale sharding"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Start the moved-shard retry counter of every sharded model at 0."""
        from django.apps import apps

        from djscale import metrics
        from djscale.db import engines  # noqa: F401  (E301: sharding needs PostgreSQL)
        from djscale.sharding.router import is_sharded

        for model in apps.get_models():
            if is_sharded(model):
                metrics.declare_sharded_model(model=model._meta.label)
