"""The local cluster runs the API gateway in front of its load balancer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from djscale.cluster.supervisor import free_port
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples/demo"


def test_gateway_part_forwards_configured_routes_only(
        djscale_cluster_factory: ClusterFactory) -> None:
    lb_port = free_port()
    cluster = djscale_cluster_factory({
        "project": {"name": "demo", "pythonpath": str(DEMO), "settings": "demo.settings",
                    "wsgi": "demo.wsgi:application"},
        "postgres": {"database": "demo"},
        "app": {"servers": 1, "workers": 1},
        "lb": {"port": lb_port},
        "services": {"demo": {"urls": [f"http://127.0.0.1:{lb_port}"], "timeout": 5.0}},
        "gateway": {"routes": [{"prefix": "/api/demo/", "service": "demo",
                                "strip_prefix": True}]},
    }, parts=("postgres", "redis", "migrate", "app", "lb", "gateway"), name="gateway")
    host, port = cluster.address("gateway")
    with urllib.request.urlopen(f"http://{host}:{port}/api/demo/whoami", timeout=10) as resp:
        body = json.loads(resp.read())
        assert resp.headers["X-Request-ID"]
    assert body["app_server"] == "app-1"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{host}:{port}/admin/", timeout=10)
    assert info.value.code == 404
    assert {r.name: r.healthy for r in cluster.status()}["gateway"]
