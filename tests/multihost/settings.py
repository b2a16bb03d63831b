"""Settings of the processes of the multi-host test cluster (app servers, worker, relay).

``DJSCALE_TOPOLOGY`` and ``DJSCALE_STATE_DIR`` name the cluster that
``tests/integration/test_multihost.py`` boots across network namespaces; every address
comes from there (the [hosts] of the topology), none is assumed to be local.
"""

from __future__ import annotations

import os

from djscale.settings import from_topology

SECRET_KEY = "djscale-multihost-tests"
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
    "tests.eventsapp",
]
MIDDLEWARE = [
    "djscale.http.proxies.TrustedProxyMiddleware",
    "djscale.http.request_id.RequestIdMiddleware",
    "djscale.http.health.HealthCheckMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "djscale.db.middleware.ReplicaMiddleware",
]
ROOT_URLCONF = "tests.multihost.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_derived = from_topology(os.environ["DJSCALE_TOPOLOGY"],
                         state_dir=os.environ["DJSCALE_STATE_DIR"])
# A long L1 lifetime: a value another host changed can only disappear from this
# process's L1 through the invalidation bus, never by expiring during the test.
_derived["CACHES"]["default"]["OPTIONS"]["L1_TIMEOUT"] = 300
globals().update(_derived)
DJSCALE = {"EVENTS": {"RETRY_BACKOFF": 0.1, "RETRY_BACKOFF_MAX": 0.5}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
