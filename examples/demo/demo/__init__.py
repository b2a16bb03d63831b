"""A small Django project run by ``make demo`` on the local cluster."""

# The standard Celery-with-Django wiring: importing the project loads its Celery app, so
# that every process (the outbox relay included) sends to the configured broker.
from demo.celery import app as celery_app

__all__ = ["celery_app"]
