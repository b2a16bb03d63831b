"""Settings shared by the shop's services; everything about the cluster comes from djscale."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from djscale.settings import from_topology

SHOP_DIR = Path(__file__).resolve().parents[2]


def build(service: str, apps: list[str]) -> dict[str, Any]:
    """Settings of one service: its apps, djscale's middleware, its topology's databases."""
    topology = os.environ.get("DJSCALE_TOPOLOGY") or str(SHOP_DIR / f"{service}.toml")
    settings: dict[str, Any] = {
        "SHOP_SERVICE": service,
        # All services verify the same signed tokens, so they share this key.
        "SECRET_KEY": os.environ.get("SHOP_SECRET_KEY", "shop-demo-secret-not-for-production"),
        "DEBUG": False,
        "ALLOWED_HOSTS": ["*"],
        "INSTALLED_APPS": [
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "djscale",
            *apps,
        ],
        "MIDDLEWARE": [
            "djscale.http.proxies.TrustedProxyMiddleware",
            "djscale.http.request_id.RequestIdMiddleware",
            "djscale.http.metrics.MetricsMiddleware",
            "djscale.http.health.HealthCheckMiddleware",
            # NUL bytes and undecodable text answer 400 before PostgreSQL sees them.
            "djscale.http.input.InputValidationMiddleware",
            "djscale.http.cache_control.CacheControlMiddleware",
            "djscale.services.context.PropagationMiddleware",
            "django.middleware.common.CommonMiddleware",
            "djscale.http.unavailable.DatabaseUnavailableMiddleware",
            "djscale.db.middleware.ReplicaMiddleware",
        ],
        "ROOT_URLCONF": f"shop.{service}.urls",
        "USE_TZ": True,
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "APPEND_SLASH": False,
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["console"], "level": "WARNING"},
        },
    }
    # Events between services travel through one broker: the topology's celery.broker.
    settings.update(from_topology(topology))
    settings["CELERY_TASK_ACKS_LATE"] = True
    settings["CELERY_BROKER_TRANSPORT_OPTIONS"] = {"visibility_timeout": 60}
    return settings
