"""Django app configuration for djscale (``INSTALLED_APPS += ["djscale"]``)."""

from __future__ import annotations

from django.apps import AppConfig


class DjscaleConfig(AppConfig):
    """Registers djscale's system checks and models."""

    name = "djscale"
    verbose_name = "djscale"
    default_auto_field = "django.db.models.BigAutoField"
