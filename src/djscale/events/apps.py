"""Django app configuration of djscale.events (label ``djscale_events``)."""

from __future__ import annotations

from django.apps import AppConfig


class EventsConfig(AppConfig):
    """Registers the Celery delivery task and every app's ``consumers`` module."""

    name = "djscale.events"
    label = "djscale_events"
    verbose_name = "djscale events (outbox, inbox)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Import the delivery task and each installed app's ``consumers`` module."""
        from django.utils.module_loading import autodiscover_modules

        from djscale.events import tasks  # noqa: F401 - registers the Celery task

        autodiscover_modules("consumers")
