"""With Django's connection pool (``postgres.pool = true``), a primary restart costs no request.

Pooled connections are not health-checked by Django (``CONN_HEALTH_CHECKS`` does not apply
to pools), so without a pool-side check every connection that was idle in the pool during
the restart fails the first request that takes it. The settings give the pool psycopg's
``check_connection``, which tests each connection as it leaves the pool.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from djscale.cluster import LocalCluster
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = {
    "project": {"name": "pooled", "pythonpath": str(ROOT / "examples/demo"),
                "settings": "demo.settings", "wsgi": "demo.wsgi:application"},
    "postgres": {"database": "pooled", "pool": True},
    "redis": {},
    "app": {"servers": 1, "workers": 2},
}


@pytest.fixture(scope="module")
def pooled(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    return djscale_cluster_factory(TOPOLOGY, parts=("postgres", "redis", "migrate", "app"),
                                   name="pooled")


def test_the_first_requests_after_a_primary_restart_succeed(pooled: LocalCluster) -> None:
    host, port = pooled.address("app-1")
    url = f"http://{host}:{port}/whoami"
    with httpx.Client(timeout=10) as client:
        # Warm both workers' pools: every worker holds idle connections afterwards.
        assert {client.get(url).status_code for _ in range(40)} == {200}
        pooled.stop_service("pg-default")  # every pooled connection is now dead
        pooled.start_service("pg-default")
        statuses = [client.get(url).status_code for _ in range(40)]
    assert statuses == [200] * 40, statuses
