"""Settings of the app servers in the Redis Cluster failover test.

A project of its own (not the tests project, which boots the shared cluster): the
topology's database and Redis Cluster through ``from_topology()``, sessions through
``djscale.sessions``, and only the middleware sessions need.
"""

from djscale.settings import from_topology

SECRET_KEY = "djscale-failover-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "djscale",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "tests.integration.cache_support.failover_views"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

globals().update(from_topology())  # $DJSCALE_TOPOLOGY, addresses from $DJSCALE_STATE_DIR

SESSION_ENGINE = "djscale.sessions"
DJSCALE_SESSIONS = {"RETRY_FOR": 15, "ACK_TIMEOUT": 0.2}
