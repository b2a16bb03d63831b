"""Django app configuration for djscale (``INSTALLED_APPS += ["djscale"]``)."""

from __future__ import annotations

from django.apps import AppConfig


class DjscaleConfig(AppConfig):
    """Registers djscale's system checks (the scalability checklist) on start-up."""

    name = "djscale"
    verbose_name = "djscale"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Import the modules that register system checks and signal handlers."""
        # Each component adds its own import here (one line each).
        # edge: the scalability checklist; query hooks; W200/E200 (settings_checks); media
        import djscale.checks  # noqa: F401
        from djscale import queries, settings_checks, storage  # noqa: F401

        # replicas: checks, write detection, Celery; E300/E301: what needs PostgreSQL
        # migrations: W310-W318 on the unapplied migrations (with `migrate`, `--database`)
        from djscale.db import checks, engines, migrate, signals  # noqa: F401
