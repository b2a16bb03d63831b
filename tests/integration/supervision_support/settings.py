"""Settings of the app servers and the Celery worker of the supervision tests.

A project of its own (not the tests project, which boots the shared cluster). An app
server refuses to start while ``<state dir>/refuse-to-start`` exists: the way a bad
deploy makes a process exit at once, for the crash-loop test.
"""

import os
from pathlib import Path

from djscale.settings import from_topology

if (os.environ.get("DJSCALE_SERVICE", "").startswith("app-")
        and (Path(os.environ.get("DJSCALE_STATE_DIR", "/nonexistent")) / "refuse-to-start")
        .exists()):
    raise RuntimeError("refuse-to-start is set: this app server will not start")

SECRET_KEY = "djscale-supervision-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "djscale"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "djscale.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

globals().update(from_topology())  # $DJSCALE_TOPOLOGY, addresses from $DJSCALE_STATE_DIR
