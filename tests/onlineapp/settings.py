"""Settings of the online-migration cluster (booted by ``tests.onlineapp.scenario``).

``DJSCALE_TOPOLOGY`` and ``DJSCALE_STATE_DIR`` name the cluster; ``ONLINEAPP_MIGRATIONS``
picks the migrations package of ``tests.onlineapp`` (the safe ones by default).
"""

import os

from djscale.settings import from_topology

SECRET_KEY = "djscale-online-migrations"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "djscale",
    "djscale.sharding",
    "tests.onlineapp",
]
MIDDLEWARE = ["djscale.http.health.HealthCheckMiddleware"]
ROOT_URLCONF = "tests.onlineapp.urls"
MIGRATION_MODULES = {"onlineapp": os.environ.get("ONLINEAPP_MIGRATIONS",
                                                 "tests.onlineapp.migrations")}
globals().update(from_topology(os.environ["DJSCALE_TOPOLOGY"],
                               state_dir=os.environ["DJSCALE_STATE_DIR"]))
