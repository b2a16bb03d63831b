"""Every metric docs/operations.md names is on ``/metrics`` after a short load.

The load runs through the shared test cluster's app (in process, on the real primary,
replicas, shards and Redis): requests and a readiness probe, a write and reads through the
router, a sharded write and read, N+1 and query-budget findings in log mode, cache reads
and writes, an invalidation from another process, a stampede wait behind another
process's recompute lock, and a call to an unreachable service.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from djscale.cache import TieredCache
from djscale.cluster.supervisor import free_port, wait_until
from djscale.db import use_replica
from djscale.errors import ServiceUnavailable
from djscale.services import RetryPolicy, ServiceClient
from tests.integration.cache_support.procs import Worker
from tests.queryapp import fixtures
from tests.shardapp.models import ShardedUser
from tests.testapp.models import Note

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases="__all__")]


def documented() -> list[str]:
    """The metric names of the table in docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    return re.findall(r"^\| `(djscale_[a-z0-9_]+)`", text, re.M)


def exposed(text: str) -> set[str]:
    """Every family and sample name in Prometheus exposition ``text``."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def library(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    yield from fixtures.library(django_db_blocker)


def _tiered() -> TieredCache:
    cache = caches["default"]
    assert isinstance(cache, TieredCache), cache
    return cache


def _stampede_wait() -> None:
    """Wait behind another process's recompute lock, as a miss during its computation."""
    cache = _tiered()
    key = f"metrics-stampede-{uuid.uuid4().hex}"
    full = cache.make_and_validate_key(key)
    other = redis.Redis.from_url(cache.l2.servers[0])
    other.set(f"{full}:djscale-lock", "another-process", px=30_000)
    before = _value("djscale_cache_stampede_waits_total")
    got: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: got.setdefault("value", caches["default"].get_or_set(
            key, lambda: "computed", 60)))
    waiter.start()
    try:
        assert wait_until(lambda: _value("djscale_cache_stampede_waits_total") > before, 10)
        cache.set(key, "from-the-other-process", 60)  # the other process's result
        waiter.join(timeout=10)
        assert got.get("value") == "from-the-other-process"
    finally:
        other.delete(f"{full}:djscale-lock")
        other.close()


def _invalidation_from_another_process() -> None:
    cache = _tiered()
    cache.get("metrics-warm-up")  # starts this process's invalidation listener
    assert cache.bus is not None and cache.bus.wait_connected(10)
    before = _value("djscale_cache_invalidations_total", direction="received")
    worker = Worker(cache.l2.servers[0])
    try:
        worker.call("set", key="metrics-product", value="v1")
        assert wait_until(lambda: _value("djscale_cache_invalidations_total",
                                          direction="received") > before, 10)
    finally:
        worker.close()


def test_every_metric_named_in_the_operations_guide_is_on_metrics_after_a_short_load(
        library: None) -> None:
    names = documented()
    assert len(names) >= 20, names  # the table was found

    client = Client()
    # As a load balancer sends it: when it got the request (queue-inclusive latency).
    assert client.get("/edge/catalog",
                      HTTP_X_REQUEST_START=f"t={time.time():.3f}").status_code == 200
    assert client.get("/health/ready").status_code in (200, 503)
    Note.objects.create(author="metrics", text="x")
    assert Note.objects.filter(author="metrics").count() == 1  # the primary (in a transaction)
    with use_replica():
        assert Note.objects.filter(author="nobody").count() == 0  # a replica
    ShardedUser.objects.create(user_id=4242, email="metrics@example.com")
    assert ShardedUser.objects.for_key(4242).count() == 1
    # scatter-gather: one query per shard, on their own connections (which do not see this
    # test's uncommitted row)
    assert ShardedUser.objects.all_shards().count() >= 0
    with override_settings(DJSCALE={"QUERIES": {"N_PLUS_ONE": "log", "SAMPLE_RATE": 1.0,
                                                "BUDGET": "log"}}):
        assert client.get("/queryapp/books/lazy").status_code == 200
        assert client.get("/queryapp/budget/url-2").status_code == 200
    cache = caches["default"]
    cache.set("metrics-key", "v", 60)
    assert cache.get("metrics-key") == "v"
    assert cache.get_or_set(f"metrics-computed-{uuid.uuid4().hex}", lambda: "c", 60) == "c"
    _invalidation_from_another_process()
    _stampede_wait()
    with ServiceClient(name="metrics-ghost", urls=[f"http://127.0.0.1:{free_port()}"],
                       retry=RetryPolicy(retries=0, backoff=0.01)) as service, \
            pytest.raises(ServiceUnavailable):
        service.get("/x")

    # Cache hits and misses are exported by the listener about once a second.
    def scraped() -> set[str]:
        response = client.get("/metrics")
        assert response.status_code == 200
        return exposed(response.content.decode())

    assert wait_until(lambda: "djscale_cache_requests_total" in scraped(), 10)
    missing = [name for name in names if name not in scraped()]
    assert not missing, f"documented in docs/operations.md but not on /metrics: {missing}"
