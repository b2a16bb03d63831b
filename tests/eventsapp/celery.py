"""The Celery application of the events tests (worker: ``celery -A tests.eventsapp.celery``)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("eventsapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
