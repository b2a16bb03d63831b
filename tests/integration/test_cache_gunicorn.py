"""Real app servers (gunicorn, 2 workers): Redis stopped mid-test, views keep answering 200."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from tests.integration.helpers import Reply, request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def get(cluster: LocalCluster, path: str) -> Reply:
    return request(cluster, "GET", path, service="app-1", timeout=10)


def test_app_servers_answer_while_redis_is_down_and_use_it_again_after(
        djscale_cluster_factory: Any) -> None:
    cluster = djscale_cluster_factory(
        {"project": {"name": "cacheapp", "pythonpath": str(ROOT),
                     "settings": "tests.integration.cache_support.settings",
                     "wsgi": "tests.wsgi:application"},
         # These views need no database: a fixed port nobody listens on spares booting one.
         "postgres": {"database": "cacheapp", "port": 9}, "redis": {},
         "app": {"servers": 1, "workers": 2}},
        parts=("redis", "app"), name="cache-gunicorn")
    rhost, rport = cluster.address("redis")
    raw = redis.Redis(host=rhost, port=rport)

    first = get(cluster, "/cache/square/3/")
    assert (first.status, first.json()) == (200, {"n": 3, "square": 9})
    assert any(b"square" in k for k in raw.keys("*"))  # the app servers wrote to L2

    cluster.stop_service("redis")
    try:
        for n in (3, 4, 5, 4, 3):
            answer = get(cluster, f"/cache/square/{n}/")
            assert answer.status == 200 and answer.json()["square"] == n * n
            assert get(cluster, "/cache/page/").status == 200
    finally:
        cluster.start_service("redis")

    raw = redis.Redis(host=rhost, port=rport)  # Redis came back empty (no persistence)

    def written_again() -> bool:
        assert get(cluster, "/cache/square/11/").status == 200
        return any(b"square" in k for k in raw.keys("*"))

    assert wait_until(written_again, 15, interval=0.2), \
        "the app servers did not write to Redis again within 15 s"
