"""Settings of the demo project: everything about the cluster comes from djscale.toml."""

from __future__ import annotations

import os
from pathlib import Path

from djscale.settings import from_topology

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "djscale",
    "djscale.events",
    "demo",
]
MIDDLEWARE = [
    "djscale.http.proxies.TrustedProxyMiddleware",
    "djscale.http.request_id.RequestIdMiddleware",
    "djscale.http.metrics.MetricsMiddleware",
    "djscale.http.health.HealthCheckMiddleware",
    "djscale.http.cache_control.CacheControlMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "djscale.http.unavailable.DatabaseUnavailableMiddleware",
    # Last: its process_exception must see a dead replica before anything answers 503.
    "djscale.db.middleware.ReplicaMiddleware",
]
ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The broker is Redis: a message a worker took but never acknowledged (acks_late; the
# worker was killed) goes back to the queue once it has been invisible this long. Short,
# so that the demo's chaos scenarios see it come back within seconds; a redelivery of a
# message that was in fact processed is skipped by the consumers' inbox. A worker holds
# the restore sweep's lock only for the sweep: a worker killed during one must not block
# every other sweep for kombu's default 300 s.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 8, "unacked_restore_interval": 1,
                                   "unacked_restore_throttle": 1, "unacked_mutex_expire": 5}
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

globals().update(from_topology(os.environ.get("DJSCALE_TOPOLOGY", BASE_DIR / "djscale.toml")))
