"""The HTTP edge on real processes: the demo project on 2 gunicorn app servers behind HAProxy.

One cluster (primary + 1 replica, Redis, 2 app servers x 2 workers, HAProxy) is booted for
the module; the tests run in any order, and after each one HAProxy must serve through both
app servers again before the next starts (a test that stopped a process or the primary
made it take them out).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.lb import lb_process
from djscale.cluster.local import http_ok
from djscale.cluster.supervisor import free_port, wait_until
from djscale.testing import ClusterFactory
from djscale.topology import LoadBalancerSpec
from tests.integration.helpers import logged_in_sessions, request, url_patterns

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"

pytestmark = pytest.mark.integration

TOPOLOGY = {
    "project": {"name": "edgedemo", "pythonpath": ".", "settings": "demo.settings",
                "wsgi": "demo.wsgi:application"},
    "postgres": {"database": "demo", "replicas": 1},
    "redis": {"mode": "single"},
    "app": {"servers": 2, "workers": 2},
    "lb": {"kind": "haproxy", "method": "round_robin", "health_check_interval_ms": 300,
           "max_fails": 2, "slowstart_seconds": 1},
}


@pytest.fixture(scope="module")
def edge(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    return djscale_cluster_factory(TOPOLOGY, parts=("postgres", "redis", "migrate", "app", "lb"),
                                   name="edge", source=DEMO)


def _directives(headers: dict[str, str]) -> set[str]:
    return {d.strip().split("=")[0].lower() for d in headers.get("cache-control", "").split(",")}


def test_no_demo_url_is_public_with_a_session_or_a_cookie(edge: LocalCluster) -> None:
    urls = url_patterns(edge)
    session = logged_in_sessions(edge, 'edge-user')['edge-user']
    assert {"/health/live", "/health/ready", "/metrics", "/whoami", "/visit"} <= set(urls)
    checked = 0
    for url in urls:
        for method in ("GET", "HEAD", "POST"):
            for cookie in ("", f"sessionid={session}"):
                headers = {"Cookie": cookie} if cookie else {}
                status, got, _ = request(edge, method, url, service="app-1", headers=headers)
                assert status < 500 or url == "/health/ready", (url, method, status)
                if cookie or "set-cookie" in got:
                    assert "public" not in _directives(got), (url, method, cookie, got)
                    assert "s-maxage" not in _directives(got), (url, method, cookie, got)
                checked += 1
    assert checked == len(urls) * 6


def test_request_id_is_created_or_kept_through_haproxy(edge: LocalCluster) -> None:
    status, headers, _ = request(edge, "GET", "/whoami", headers={"X-Request-ID": "edge-test-1"})
    assert status == 200, headers
    assert headers["x-request-id"] == "edge-test-1"
    _, headers, _ = request(edge, "GET", "/whoami")
    assert len(headers["x-request-id"]) >= 16
    _, headers, _ = request(edge, "GET", "/whoami", headers={"X-Request-ID": "bad id;"})
    assert headers["x-request-id"] != "bad id;"


def test_metrics_are_not_served_through_the_load_balancer(edge: LocalCluster) -> None:
    assert request(edge, "GET", "/metrics")[0] == 404
    assert request(edge, "GET", "/metrics", service="app-1")[0] == 200


def test_metrics_pass_promtool_and_count_every_worker(edge: LocalCluster) -> None:
    for _ in range(30):
        assert request(edge, "GET", "/whoami", service="app-1")[0] == 200
    request(edge, "GET", "/health/ready", service="app-1")
    status, headers, body = request(edge, "GET", "/metrics", service="app-1")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    whoami = [line for line in text.splitlines()
              if line.startswith("djscale_http_requests_total{") and 'view="demo.views.whoami"'
              in line]
    assert whoami and sum(float(line.rsplit(" ", 1)[1]) for line in whoami) >= 30
    assert 'djscale_health_check_up{check="db:default"' in text
    assert "djscale_http_request_duration_seconds_bucket" in text
    assert 'djscale_replica_lag_seconds{alias="default_replica1"' in text
    assert 'djscale_db_queries_total{alias="default' in text
    # gunicorn's two workers write their own files; /metrics sums them
    files = list((edge.state_dir / "metrics" / "app-1").glob("*.db"))
    assert len({f.stem.rsplit("_", 1)[-1] for f in files}) >= 2, files


EDGE_CHECK_IDS = [f"djscale.W{i:03d}" for i in range(1, 12)] + ["djscale.E001", "djscale.E002"]


def test_scalability_checks_are_silent_on_the_demo_project(edge: LocalCluster) -> None:
    out = edge.django_admin("check", "--deploy", "--tag", "djscale", service="edge-check")
    assert not [i for i in EDGE_CHECK_IDS if i in out], out


def _upstreams(cluster: LocalCluster, n: int) -> list[str]:
    return [request(cluster, "GET", "/health/live").headers.get("x-upstream", "?")
            for _ in range(n)]


@pytest.fixture(autouse=True)
def _back_in_rotation(edge: LocalCluster) -> Iterator[None]:
    """After each test, wait until HAProxy serves through both app servers again (a test
    that stopped a process or the primary made it take them out)."""
    yield
    assert wait_until(lambda: set(_upstreams(edge, 10)) == {"app-1", "app-2"}, 15,
                      interval=0.2)


def test_haproxy_takes_an_unready_server_out_and_back(edge: LocalCluster) -> None:
    assert set(_upstreams(edge, 10)) == {"app-1", "app-2"}
    drain = edge.state_dir / "drain" / "app-1"
    drain.parent.mkdir(parents=True, exist_ok=True)
    drain.touch()
    try:
        assert request(edge, "GET", "/health/ready", service="app-1")[0] == 503
        assert wait_until(lambda: set(_upstreams(edge, 10)) == {"app-2"}, 10, interval=0.2)
        # out of rotation, and every request still succeeds
        statuses = [request(edge, "GET", "/whoami")[0] for _ in range(20)]
        assert statuses == [200] * 20
    finally:
        drain.unlink()


@pytest.fixture
def nginx(edge: LocalCluster, tmp_path: Path) -> Iterator[tuple[str, int]]:
    spec = LoadBalancerSpec(kind="nginx", max_fails=1, fail_timeout=10)
    port = free_port()
    proc = lb_process(spec, edge.upstreams(), port=port, run_dir=tmp_path / "nginx",
                      log=tmp_path / "nginx.log")
    proc.start()
    try:
        proc.wait_ready(lambda: http_ok(spec.host, port), 20)
        yield spec.host, port
    finally:
        proc.stop()


def test_nginx_ejects_a_crashed_app_server_without_failed_gets(
        edge: LocalCluster, nginx: tuple[str, int]) -> None:
    host, port = nginx

    def get() -> tuple[int, str]:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/whoami", headers={"Host": "localhost"})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("X-Upstream", "")
        finally:
            conn.close()

    assert len({get()[1] for _ in range(10)}) == 2
    edge.stop_service("app-1", crash=True)
    try:
        answers = [get() for _ in range(40)]
        assert [s for s, _ in answers] == [200] * 40
        app2 = f"{edge.address('app-2')[0]}:{edge.address('app-2')[1]}"
        # after the first failure nginx stops trying app-1 (max_fails=1, fail_timeout=10s)
        assert all(up == app2 for _, up in answers[2:]), answers[:5]
    finally:
        edge.start_service("app-1")


def _ready(cluster: LocalCluster) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    status, _, body = request(cluster, "GET", "/health/ready", service="app-1", timeout=10)
    return status, json.loads(body), time.monotonic() - started


def test_ready_is_503_within_2s_when_the_primary_hangs_or_stops_and_200_after(
        edge: LocalCluster) -> None:
    assert wait_until(lambda: _ready(edge)[0] == 200, 15)

    # A hung primary (SIGSTOP): the probe still answers within its deadline.
    pid = edge.process("pg-default").pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.2)  # let the cached healthy answer expire
        status, body, took = _ready(edge)
        assert status == 503 and body["checks"]["db:default"]["error"] == "Timeout", body
        assert took < 1.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: _ready(edge)[0] == 200, 15)

    edge.stop_service("pg-default")
    stopped = time.monotonic()
    try:
        # every worker of the app server (each caches its answer for 1 s) says 503; the
        # requests land on workers at random, so ask until 8 answers in a row agree
        answers: list[tuple[int, dict[str, Any]]] = []

        def all_unavailable() -> bool:
            answers[:] = [_ready(edge)[:2] for _ in range(8)]
            return all(code == 503 for code, _ in answers)

        assert wait_until(all_unavailable, 2.0, interval=0.05), answers
        took = time.monotonic() - stopped
        assert took < 2.0
        print(f"503 from every worker {took:.2f}s after the primary stopped")
        body = answers[-1][1]
        assert body["status"] == "unavailable"
        assert body["checks"]["db:default"]["ok"] is False
        text = json.dumps(body)
        assert str(edge.address("pg-default")[1]) not in text and "127.0.0.1" not in text

        # HAProxy takes both app servers out; its own 503 still carries the request id.
        last: dict[str, str] = {}

        def haproxy_answers_itself() -> bool:
            status, got, _ = request(edge, "GET", "/whoami",
                                     headers={"X-Request-ID": "edge-down-1"})
            last.clear()
            last.update(got)
            return status == 503 and "x-upstream" not in got

        assert wait_until(haproxy_answers_itself, 15, interval=0.1)
        assert last["x-request-id"] == "edge-down-1", last
    finally:
        edge.start_service("pg-default")
    restarted = time.monotonic()
    assert wait_until(lambda: all(_ready(edge)[0] == 200 for _ in range(4)), 30)
    print(f"200 again {time.monotonic() - restarted:.2f}s after the primary restarted")
