"""What every settings module of the tests project shares: apps, middleware, URLs.

It names no server: ``tests.settings`` (integration, a real cluster) and
``tests.unit.settings`` (pure logic, nothing running) add the databases and caches.
"""

from __future__ import annotations

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
