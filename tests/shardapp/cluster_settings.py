"""Settings for a child process on a cluster booted by ``djscale_cluster_factory``.

``DJSCALE_TOPOLOGY`` and ``DJSCALE_STATE_DIR`` name that cluster (its ``djscale.toml``
and state folder); used by tests that need a topology other than the shared one.
"""

import os

from djscale.settings import from_topology

SECRET_KEY = "djscale-shard-tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "djscale",
    "djscale.sharding",
    "tests.shardapp",
]
globals().update(from_topology(os.environ["DJSCALE_TOPOLOGY"],
                               state_dir=os.environ["DJSCALE_STATE_DIR"]))
