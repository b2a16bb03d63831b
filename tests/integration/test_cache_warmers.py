"""Warmers, the warm_cache command, atomic counters and sessions."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.cache import cache, caches
from django.core.management import call_command
from django.core.management.base import CommandError

from djscale.cache import AtomicCounter, cached, warmer
from djscale.cache.warmers import _registry, warm_call
from tests.integration.helpers import tiered

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(_registry)
    _registry.clear()
    try:
        yield
    finally:
        _registry.clear()
        _registry.update(saved)


def test_warm_cache_fills_the_registered_warmers_in_batches(clean_registry: None) -> None:
    tag = uuid.uuid4().hex
    batches: list[int] = []

    @warmer("products", batch_size=40, count=lambda: 100)
    def products() -> Iterator[tuple[str, dict[str, int]]]:
        for i in range(100):
            yield f"{tag}:product:{i}", {"id": i}

    @cached(timeout=60, name=f"category-{tag}")
    def category(slug: str) -> str:
        batches.append(1)
        return slug.upper()

    @warmer("categories")
    def categories() -> Iterator[object]:
        for slug in ("shoes", "hats"):
            yield warm_call(category, slug)

    out = io.StringIO()
    call_command("warm_cache", stdout=out)
    text = out.getvalue()
    assert "products: [" in text and "100/100" in text
    assert "warmed 102 entries from 2 warmer(s)" in text
    assert cache.get(f"{tag}:product:99") == {"id": 99}
    assert len(batches) == 2
    assert category("shoes") == "SHOES"
    assert len(batches) == 2  # served from the cache the warmer filled


def test_warm_cache_rejects_unknown_warmers(clean_registry: None) -> None:
    with pytest.raises(CommandError, match="unknown warmer"):
        call_command("warm_cache", "nope", stdout=io.StringIO())


def test_atomic_counter_loses_no_increment_under_concurrency() -> None:
    counter = AtomicCounter(f"views-{uuid.uuid4().hex}", timeout=60)

    def hit() -> None:
        for _ in range(50):
            counter.incr()

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value() == 400
    counter.reset()
    assert counter.value() == 0


def test_sessions_live_in_redis_without_l1_and_in_the_database() -> None:
    assert settings.SESSION_ENGINE == "djscale.sessions"  # cached_db, failover-safe
    sessions = tiered(settings.SESSION_CACHE_ALIAS)
    assert sessions.l1.enabled is False  # every app server reads the same copy
    assert sessions.bus is None


@pytest.mark.django_db
def test_a_session_survives_losing_its_cache_entry() -> None:
    from django.contrib.sessions.backends.cached_db import SessionStore

    s = SessionStore()
    s["cart"] = [1, 2]
    s.save()
    caches[settings.SESSION_CACHE_ALIAS].delete(s.cache_key)  # e.g. Redis restarted
    assert SessionStore(session_key=s.session_key)["cart"] == [1, 2]
