"""A Django project for the multi-host test: its app servers and worker run in namespaces.

The Celery app is imported with the project (Celery's Django convention), so that
``django-admin events_relay`` publishes through it and not through Celery's default app.
"""

from tests.eventsapp.celery import app as celery_app

__all__ = ["celery_app"]
