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
        import djscale.checks  # noqa: F401  (edge: the scalability checklist)
        import djscale.settings_checks  # noqa: F401  (W200: settings from_topology replaced)
        from djscale import queries, storage  # noqa: F401  (query hooks; media checks)
        from djscale.db import checks, signals  # noqa: F401  (replicas: checks, write detection, Celery)
        from djscale.db import engines  # noqa: F401  (E300/E301: what needs PostgreSQL)
