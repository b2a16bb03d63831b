"""Settings for the test suite: a real primary + 2 replicas, 3 shards and Redis.

The cluster is booted on first import (once per pytest process; gunicorn and Celery
processes started by tests inherit it through DJSCALE_STATE_DIR) and stopped at the end
of the session.
"""

from __future__ import annotations

from pathlib import Path

from djscale.settings import from_topology
from djscale.testing import shared_cluster

HERE = Path(__file__).resolve().parent
SECRET_KEY = "djscale-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "djscale",
    "djscale.sharding",
    "djscale.events",
    "tests.testapp",
    "tests.shardapp",
    "tests.edgeapp",
    "tests.queryapp",
    "tests.eventsapp",
]
MIDDLEWARE = [
    "djscale.http.proxies.TrustedProxyMiddleware",
    "djscale.http.request_id.RequestIdMiddleware",
    "djscale.http.metrics.MetricsMiddleware",
    "djscale.http.health.HealthCheckMiddleware",
    "djscale.http.cache_control.CacheControlMiddleware",
    "djscale.queries.QueryInspectionMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "djscale.db.middleware.ReplicaMiddleware",
]
ROOT_URLCONF = "tests.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_cluster = shared_cluster(HERE / "topology.toml")
globals().update(from_topology(_cluster.topology, state_dir=_cluster.state_dir))
