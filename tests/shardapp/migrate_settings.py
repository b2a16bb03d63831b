"""Test settings pointing every database alias at a fresh, empty database.

Used by ``test_shard_migrate`` to run ``migrate_shards`` in a subprocess against
databases nothing has migrated yet; ``DJSCALE_FRESH_DB`` names them (created by the test
on every server of the shared cluster).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _BASE

DATABASES = {alias: {**cfg, "NAME": os.environ["DJSCALE_FRESH_DB"]}
             for alias, cfg in _BASE.items()}
