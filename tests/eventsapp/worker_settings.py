"""Settings of the Celery worker started by the events tests.

The tests' settings, pointed at the *test* databases that pytest-django created (so the
worker sees the rows the tests commit) and at the broker the tests chose.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

_names = {alias: db.get("TEST", {}).get("NAME") or f"test_{db['NAME']}"
          for alias, db in DATABASES.items()}
for _alias, _db in DATABASES.items():
    _mirror = _db.get("TEST", {}).get("MIRROR")
    _db["NAME"] = _names[_mirror] if _mirror else _names[_alias]

CELERY_BROKER_URL = os.environ["EVENTS_TEST_BROKER_URL"]
# A message taken by a worker that died is handed out again after this many seconds.
# (kombu otherwise sweeps for such messages only every ~100 s.)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 4, "unacked_restore_interval": 1,
                                   "unacked_restore_throttle": 1}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
DJSCALE = {"EVENTS": {"RETRY_BACKOFF": 0.1, "RETRY_BACKOFF_MAX": 0.5}}
