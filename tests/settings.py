"""Settings of the integration tests: a real primary + 2 replicas, 3 shards and Redis.

The cluster is booted when this module is first imported (once per pytest process;
gunicorn and Celery processes started by tests inherit it through DJSCALE_STATE_DIR) and
stopped at the end of the session. ``tests/conftest.py`` picks this module only when the
run collects tests outside ``tests/unit``; unit tests use ``tests.unit.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from djscale.settings import from_topology
from djscale.testing import shared_cluster
from tests.base_settings import *  # noqa: F403

HERE = Path(__file__).resolve().parent
# Set by from_topology() below; declared for the modules that import them from here.
DATABASES: dict[str, dict[str, Any]]
CACHES: dict[str, dict[str, Any]]

_cluster = shared_cluster(HERE / "topology.toml")
globals().update(from_topology(_cluster.topology, state_dir=_cluster.state_dir))
