"""The cluster dashboard: served by the running cluster, rendered by a real headless Chromium.

One small cluster (the demo project: primary + 2 replicas, Redis, 2 app servers behind
nginx, a Celery worker, the dashboard) is booted once for this module, and a second one
with two shards (databases and the dashboard only) for the shard sizes. The page is
opened in Debian's ``chromium --headless``; the DOM it leaves after its JavaScript ran and
its screenshot are checked, before and after a replica is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis

from djscale.cluster import PARTS, LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.testing import ClusterFactory
from tests.integration.helpers import connect, replay_paused, sql

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

TOPOLOGY = {
    "project": {"name": "dashdemo", "pythonpath": str(ROOT / "examples/demo"),
                "settings": "demo.settings", "wsgi": "demo.wsgi:application"},
    "postgres": {"database": "demo", "replicas": 2, "max_lag_seconds": 1},
    "redis": {"mode": "single"},
    "app": {"servers": 2, "workers": 1},
    "lb": {"kind": "nginx"},
    "celery": {"workers": 1, "concurrency": 1, "app": "demo.celery:app"},
}
EXPECTED = {"pg-default", "pg-default-replica1", "pg-default-replica2", "redis", "app-1", "app-2",
            "lb", "celery-1", "dashboard", "watchdog"}
# Shards get a cluster of their own, without Django: only databases and the dashboard.
SHARDED = {
    "project": {"name": "dashshards"},
    "postgres": {"database": "app"},
    "shards": [{"name": "shard1"}, {"name": "shard2"}],
}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Debian's chromium is needed to render the dashboard: "
                "apt-get install -y chromium (scripts/bootstrap installs it)")


@pytest.fixture(scope="module")
def cluster(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    # gunicorn writes its access log only when asked: the dashboard counts requests there
    # when the app serves no request counter on /metrics.
    previous = os.environ.get("DJSCALE_ACCESS_LOG")
    os.environ["DJSCALE_ACCESS_LOG"] = "1"
    try:
        booted = djscale_cluster_factory(TOPOLOGY, name="dashboard", parts=PARTS)
    finally:
        if previous is None:
            os.environ.pop("DJSCALE_ACCESS_LOG", None)
        else:
            os.environ["DJSCALE_ACCESS_LOG"] = previous
    yield booted


def _url(cluster: LocalCluster, path: str = "/") -> str:
    host, port = cluster.address("dashboard")
    return f"http://{host}:{port}{path}"


def _state(cluster: LocalCluster) -> dict[str, Any]:
    with urllib.request.urlopen(_url(cluster, "/api/state"), timeout=10) as resp:
        state: dict[str, Any] = json.loads(resp.read())
    return state


def _health(cluster: LocalCluster) -> dict[str, str]:
    return {s["name"]: s["health"] for s in _state(cluster)["services"]}


def _render(cluster: LocalCluster, tmp: Path, name: str) -> tuple[str, Path]:
    """Open the page in headless Chromium: return the DOM after the JS ran and a PNG."""
    png = tmp / f"{name}.png"
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1280,900",
              "--virtual-time-budget=5000"]
    # One run does both: the DOM after the JS ran on stdout, and the screenshot.
    dom = subprocess.run([*common, f"--user-data-dir={tmp / (name + '-profile')}",
                          f"--screenshot={png}", "--dump-dom", _url(cluster)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert png.exists(), "chromium wrote no screenshot"
    return dom, png


class _Nodes(HTMLParser):
    """Collect ``data-service``/``data-health`` of the SVG nodes and the services table."""

    def __init__(self) -> None:
        super().__init__()
        self.svg: dict[str, str] = {}
        self.table: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-service" in a:
            target = self.svg if tag == "g" else self.table
            target[a["data-service"] or ""] = a.get("data-health") or ""


def _nodes(dom: str) -> _Nodes:
    parser = _Nodes()
    parser.feed(dom)
    return parser


def _colours(png: Path) -> list[tuple[int, tuple[int, int, int]]]:
    """``(count, rgb)`` of every colour in the screenshot."""
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1280, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return cast("list[tuple[int, tuple[int, int, int]]]", colours)  # RGB: 3 bands


def _reddish(colours: list[tuple[int, tuple[int, int, int]]]) -> int:
    # The "down" colour (#d64545) is the only strong red on the page.
    return sum(n for n, (r, g, b) in colours if r > 180 and g < 110 and b < 110)


def _changed_pixels(a: Path, b: Path) -> int:
    from PIL import Image, ImageChops

    with Image.open(a) as one, Image.open(b) as two:
        diff = ImageChops.difference(one.convert("RGB"), two.convert("RGB")).convert("L")
    return sum(diff.point(lambda v: 255 if v else 0).histogram()[1:])


def test_cluster_up_starts_the_dashboard_and_it_reports_every_service(
        cluster: LocalCluster) -> None:
    rows = {r.name: r for r in cluster.status()}
    assert rows["dashboard"].healthy
    assert wait_until(lambda: set(_health(cluster)) == EXPECTED, 10), _health(cluster)
    assert wait_until(lambda: set(_health(cluster).values()) == {"healthy"}, 30), \
        _health(cluster)
    state = _state(cluster)
    assert {r["name"] for r in state["replicas"]} == {"pg-default-replica1",
                                                      "pg-default-replica2"}
    assert all(r["lag_bytes"] is not None and r["lag_seconds"] is not None
               for r in state["replicas"]), state["replicas"]
    (db,) = state["databases"]
    assert db["name"] == "pg-default" and db["role"] == "primary"
    assert db["size_bytes"] > 1_000_000


def test_a_replica_whose_replay_is_paused_shows_its_lag_in_bytes_and_seconds_and_degrades(
        cluster: LocalCluster) -> None:
    with replay_paused(cluster, ["pg-default-replica2"]):
        sql(cluster, "pg-default", "CREATE TABLE IF NOT EXISTS dashboard_lag (v text)")
        sql(cluster, "pg-default", "INSERT INTO dashboard_lag "
            "SELECT repeat('x', 100) FROM generate_series(1, 2000)")

        def lagging() -> bool:
            (rep,) = [r for r in _state(cluster)["replicas"]
                      if r["name"] == "pg-default-replica2"]
            return bool(rep["health"] == "degraded" and rep["lag_bytes"] > 100_000
                        and rep["lag_seconds"] > rep["max_lag_seconds"])

        assert wait_until(lagging, 15, interval=0.3), _state(cluster)["replicas"]
    assert wait_until(lambda: _health(cluster)["pg-default-replica2"] == "healthy", 30), \
        _state(cluster)["replicas"]


def test_a_hung_service_shows_as_down_and_the_other_services_keep_updating(
        cluster: LocalCluster) -> None:
    pid = cluster.process("redis").pid
    os.kill(pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        assert wait_until(lambda: _health(cluster)["redis"] == "down", 15, interval=0.3)
        first = _state(cluster)["generated_at"]
        assert wait_until(lambda: _state(cluster)["generated_at"] != first, 10), \
            "the snapshot stopped updating while a service hangs"
        assert _health(cluster)["pg-default"] == "healthy"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: _health(cluster)["redis"] == "healthy", 15)


def test_shard_sizes_are_the_size_of_each_shard_database(
        djscale_cluster_factory: ClusterFactory) -> None:
    sharded = djscale_cluster_factory(SHARDED, parts=("postgres", "dashboard"),
                                      name="dashboard-shards")
    host, port = sharded.address("pg-shard2")
    with psycopg.connect(host=host, port=port, user="djscale", dbname="app",
                         autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad "
                     "FROM generate_series(1, 20000) g")

    def sizes() -> dict[str, tuple[str, int]]:
        return {d["name"]: (d["role"], d["size_bytes"]) for d in _state(sharded)["databases"]}

    def grown() -> bool:
        s = sizes()
        return set(s) == {"pg-default", "pg-shard1", "pg-shard2"} and \
            s["pg-shard2"][1] > s["pg-shard1"][1] + 4_000_000
    assert wait_until(grown, 10), sizes()
    assert {name: role for name, (role, _) in sizes().items()} == {
        "pg-default": "primary", "pg-shard1": "shard", "pg-shard2": "shard"}
    # No outbox table anywhere: the backlog is unknown, not zero.
    assert _state(sharded)["outbox_backlog"] is None
    assert all(o["backlog"] is None for o in _state(sharded)["outbox"])


def test_page_rendered_in_chromium_names_each_running_service_with_its_health(
        cluster: LocalCluster, tmp_path: Path) -> None:
    assert wait_until(lambda: set(_health(cluster).values()) == {"healthy"}, 30), _health(cluster)
    dom, png = _render(cluster, tmp_path, "healthy")
    nodes = _nodes(dom)
    assert nodes.table == dict.fromkeys(EXPECTED, "healthy"), nodes.table
    # The picture holds every service but the tooling (the dashboard itself, the watchdog).
    assert nodes.svg == dict.fromkeys(EXPECTED - {"dashboard", "watchdog"}, "healthy"), \
        nodes.svg
    assert "<svg" in dom and "dashdemo" in dom
    colours = _colours(png)
    assert len(colours) > 50, "the screenshot is blank"
    assert max(colours)[0] < 0.9 * 1280 * 900, "the screenshot is nearly blank"
    assert _reddish(colours) < 50, "a healthy cluster should show no red"


def test_requests_per_second_are_shown_per_app_server(cluster: LocalCluster) -> None:
    host, port = cluster.address("lb")
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(f"http://{host}:{port}/whoami", timeout=10) as resp:
                resp.read()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        def busy() -> bool:
            apps = {a["name"]: a for a in _state(cluster)["apps"]}
            return set(apps) == {"app-1", "app-2"} and all(
                (a["requests_per_second"] or 0) > 0 for a in apps.values())

        assert wait_until(busy, 15, interval=0.5), _state(cluster)["apps"]
    finally:
        stop.set()
        thread.join(timeout=15)
    assert {a["source"] for a in _state(cluster)["apps"]} <= {"/metrics", "access log"}


def test_cache_hit_ratio_comes_from_redis_keyspace_hits_and_misses(
        cluster: LocalCluster) -> None:
    host, port = cluster.address("redis")
    client = redis.Redis(host=host, port=port)
    try:
        before = client.info("stats")
        client.set("dashboard:test", b"1")
        for _ in range(30):
            client.get("dashboard:test")
        for _ in range(10):
            client.get("dashboard:absent")
        after = client.info("stats")
    finally:
        client.close()
    hits, misses = after["keyspace_hits"], after["keyspace_misses"]
    assert hits - before["keyspace_hits"] >= 30

    def shown() -> bool:
        (cache,) = [c for c in _state(cluster)["caches"] if c["name"] == "redis"]
        return cache["hits"] >= hits and cache["misses"] >= misses \
            and cache["hit_ratio"] is not None

    assert wait_until(shown, 10), _state(cluster)["caches"]


def test_outbox_backlog_counts_unpublished_rows_of_an_outbox_table(
        cluster: LocalCluster) -> None:
    baseline = _state(cluster)["outbox_backlog"]  # None: no outbox table (yet)
    with connect(cluster) as conn:
        conn.execute("CREATE TABLE dashboard_test_outbox "
                     "(id bigserial PRIMARY KEY, published_at timestamptz)")
        try:
            conn.execute("INSERT INTO dashboard_test_outbox (published_at) "
                         "VALUES (NULL), (NULL), (now())")
            expected = (baseline or 0) + 2
            assert wait_until(lambda: _state(cluster)["outbox_backlog"] == expected, 10), \
                _state(cluster)["outbox"]
        finally:
            conn.execute("DROP TABLE dashboard_test_outbox")
    assert wait_until(lambda: _state(cluster)["outbox_backlog"] == baseline, 10)


def test_killing_a_replica_turns_it_down_in_the_page_and_changes_the_screenshot(
        cluster: LocalCluster, tmp_path: Path) -> None:
    assert wait_until(lambda: set(_health(cluster).values()) == {"healthy"}, 30), _health(cluster)
    _, before = _render(cluster, tmp_path, "before")
    cluster.stop_service("pg-default-replica1", crash=True)
    try:
        assert wait_until(lambda: _health(cluster)["pg-default-replica1"] == "down", 10)
        dom, after = _render(cluster, tmp_path, "after")
        nodes = _nodes(dom)
        assert nodes.svg["pg-default-replica1"] == "down"
        assert nodes.table["pg-default-replica1"] == "down"
        assert nodes.svg["pg-default-replica2"] == "healthy"
        assert nodes.svg["pg-default"] == "healthy"
        changed = _changed_pixels(before, after)
        assert changed > 1000, f"only {changed} pixels changed"
        assert _reddish(_colours(after)) > _reddish(_colours(before)) + 200, \
            "the dead replica is not drawn in red"
    finally:
        cluster.start_service("pg-default-replica1")
    assert wait_until(lambda: _health(cluster)["pg-default-replica1"] == "healthy", 30), \
        _state(cluster)["replicas"]
