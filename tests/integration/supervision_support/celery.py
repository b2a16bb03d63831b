"""Celery application of the supervision tests' worker (broker: the topology's Redis)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.supervision_support.settings")
app = Celery("supervision")
app.config_from_object("django.conf:settings", namespace="CELERY")
