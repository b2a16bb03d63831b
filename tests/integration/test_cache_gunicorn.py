"""Real app servers (gunicorn, 2 workers): Redis stopped mid-test, views keep answering 200."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from djscale.cluster.supervisor import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _get(host: str, port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else body
    finally:
        conn.close()


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
    host, port = cluster.address("app-1")
    rhost, rport = cluster.address("redis")
    raw = redis.Redis(host=rhost, port=rport)

    assert _get(host, port, "/cache/square/3/") == (200, {"n": 3, "square": 9})
    assert any(b"square" in k for k in raw.keys("*"))  # the app servers wrote to L2

    cluster.stop_service("redis")
    try:
        for n in (3, 4, 5, 4, 3):
            status, body = _get(host, port, f"/cache/square/{n}/")
            assert status == 200 and body["square"] == n * n
            assert _get(host, port, "/cache/page/")[0] == 200
    finally:
        cluster.start_service("redis")

    raw = redis.Redis(host=rhost, port=rport)  # Redis came back empty (no persistence)
    def written_again() -> bool:
        assert _get(host, port, "/cache/square/11/")[0] == 200
        return any(b"square" in k for k in raw.keys("*"))

    assert wait_until(written_again, 15, interval=0.2), \
        "the app servers did not write to Redis again within 15 s"
