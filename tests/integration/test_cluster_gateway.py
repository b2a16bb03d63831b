"""The local cluster runs the API gateway in front of its load balancer, and rolls it out.

One cluster (a demo app server behind the load balancer, the gateway in front) serves
the module's tests.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.rollout import rollout
from djscale.cluster.supervisor import free_port, pid_alive
from djscale.testing import ClusterFactory
from tests.integration.helpers import wrk_load

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples/demo"


@pytest.fixture(scope="module")
def cluster(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    lb_port = free_port()
    return djscale_cluster_factory({
        "project": {"name": "demo", "pythonpath": str(DEMO), "settings": "demo.settings",
                    "wsgi": "demo.wsgi:application"},
        "postgres": {"database": "demo"},
        "app": {"servers": 1, "workers": 1},
        "lb": {"port": lb_port},
        "services": {"demo": {"urls": [f"http://127.0.0.1:{lb_port}"], "timeout": 5.0}},
        "gateway": {"routes": [{"prefix": "/api/demo/", "service": "demo",
                                "strip_prefix": True}]},
    }, parts=("postgres", "redis", "migrate", "app", "lb", "gateway"), name="gateway")


def test_gateway_part_forwards_configured_routes_only(cluster: LocalCluster) -> None:
    host, port = cluster.address("gateway")
    with urllib.request.urlopen(f"http://{host}:{port}/api/demo/whoami", timeout=10) as resp:
        body = json.loads(resp.read())
        assert resp.headers["X-Request-ID"]
    assert body["app_server"] == "app-1"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{host}:{port}/admin/", timeout=10)
    assert info.value.code == 404
    assert {r.name: r.healthy for r in cluster.status()}["gateway"]


def test_gateway_rollout_under_load_refuses_and_cuts_no_request(cluster: LocalCluster) -> None:
    """The new gateway starts beside the old one on its port; the old one drains.

    Before (stop, then start) this cost about a second of refused connections and a read
    error per keep-alive connection uvicorn closed (docs/rollout.md).
    """
    host, port = cluster.address("gateway")
    old = cluster.process("gateway").pid
    with wrk_load(f"http://{host}:{port}/api/demo/whoami", connections=8) as reports:
        time.sleep(2.0)
        report = rollout(cluster, parts=("gateway",))
        time.sleep(2.0)
    wrk = reports[0]
    print(report.text(), f"wrk: {wrk.requests} requests, non-2xx {wrk.non_2xx}, "
          f"socket errors {wrk.socket_errors}")
    assert wrk.requests > 0 and wrk.failed == 0, wrk.output
    [replaced] = report.replaced
    assert replaced.old_pid == old and replaced.new_pid != old
    assert cluster.process("gateway").pid == replaced.new_pid
    assert not pid_alive(old)
    assert {r.name: r.healthy for r in cluster.status()}["gateway"]
