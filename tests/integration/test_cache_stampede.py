"""Stampede protection: one computation for 50 concurrent callers of a cold key."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache

from djscale.cache import bypass_cache, cached
from tests.integration.cache_support.procs import Worker

pytestmark = pytest.mark.integration

REDIS_URL = settings.CACHES["default"]["LOCATION"].rsplit("/", 1)[0] + "/4"


def _run_concurrently(n: int, fn: object) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        try:
            value = fn()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    return results


def test_50_concurrent_callers_of_a_cold_key_compute_once_per_process() -> None:
    calls = []

    @cached(timeout=60, name=f"cold-{uuid.uuid4().hex}")
    def product(pid: int) -> dict[str, int]:
        calls.append(pid)
        time.sleep(0.2)  # a slow query
        return {"id": pid}

    results = _run_concurrently(50, lambda: product(7))
    assert len(calls) == 1
    assert results == [{"id": 7}] * 50


def test_50_callers_in_two_processes_compute_once_with_the_redis_lock() -> None:
    key = f"cold-{uuid.uuid4().hex}"
    counter = f"computations-{key}"
    a = Worker(REDIS_URL)
    try:
        b = Worker(REDIS_URL)
        try:
            start_at = time.monotonic() + 0.5
            a.send("stampede", key=key, counter=counter, threads=25, start_at=start_at)
            b.send("stampede", key=key, counter=counter, threads=25, start_at=start_at)
            ra, rb = a.receive(), b.receive()
        finally:
            b.close()
    finally:
        a.close()
    assert ra["results"] + rb["results"] == [f"value-of-{key}"] * 50
    import redis

    computations = int(redis.Redis.from_url(REDIS_URL).get(counter) or 0)
    assert computations == 1


def test_followers_get_the_leaders_exception_and_nothing_is_cached() -> None:
    calls = []

    @cached(timeout=60, name=f"boom-{uuid.uuid4().hex}")
    def boom() -> int:
        calls.append(1)
        time.sleep(0.1)
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        _run_concurrently(10, boom)
    assert len(calls) == 1
    with pytest.raises(RuntimeError):
        boom()
    assert len(calls) == 2


def test_xfetch_refreshes_a_hot_key_before_it_expires() -> None:
    key = f"hot-{uuid.uuid4().hex}"
    computed = []

    def compute() -> int:
        computed.append(1)
        time.sleep(0.05)  # delta = 50 ms
        return len(computed)

    assert cache.get_or_set(key, compute, timeout=1) == 1
    # Within the last stretch before expiry, with delta = 50 ms and beta = 1, one of many
    # reads recomputes early while the value is still there.
    deadline = time.monotonic() + 0.95
    while time.monotonic() < deadline and len(computed) == 1:
        cache.get_or_set(key, compute, timeout=1)
        time.sleep(0.002)
    assert len(computed) == 2
    assert cache.get(key) == 2


def test_bypass_and_invalidate() -> None:
    calls = []

    @cached(timeout=60, name=f"bypass-{uuid.uuid4().hex}")
    def f(x: int, y: str = "a") -> str:
        calls.append((x, y))
        return f"{x}{y}"

    assert f(1) == "1a"
    assert f(1) == "1a"
    assert f(x=1, y="a") == "1a"
    assert len(calls) == 1
    with bypass_cache():
        assert f(1) == "1a"
    assert f.uncached(1) == "1a"
    assert len(calls) == 3
    assert f.invalidate(1) is True
    assert f(1) == "1a"
    assert len(calls) == 4
    assert f.refresh(1) == "1a"
    assert len(calls) == 5


def test_cached_caches_none() -> None:
    calls = []

    @cached(timeout=60, name=f"none-{uuid.uuid4().hex}")
    def nothing() -> None:
        calls.append(1)

    assert nothing() is None
    assert nothing() is None
    assert len(calls) == 1
