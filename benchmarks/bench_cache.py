"""Tiered cache: L1 hit vs LocMemCache and django-redis; cached vs uncached view on gunicorn.

Three ratios, each measured side by side in the same run:

1. ``TieredCache.get`` answered by L1 vs Django's ``LocMemCache.get`` (same value; both
   hand out a private copy on every hit: LocMemCache unpickles, L1 copies plain data by a
   precomputed plan, see djscale.cache.plain). Target: no slower (ratio >= 1).
2. ``TieredCache.get`` answered by L1 vs django-redis ``get`` on the same Redis.
   Target: at least 30x faster. A second row measures the same with a value that is not
   plain data (an object, which L1 keeps pickled and unpickles per hit), no target.
3. Requests/s of a database-backed view (50 rows from PostgreSQL as JSON) served through
   ``@cached`` vs the same view without cache, on one gunicorn app server (2 workers),
   measured with wrk in alternating rounds. Target: at least 3x.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import ROOT, Context, Result, interleaved, wrk

TOPIC = "cache"

VALUE: dict[str, Any] = {
    "id": 123456, "sku": "SKU-123456", "name": "Espresso machine, stainless steel",
    "price": "249.90", "currency": "EUR", "in_stock": True, "rating": 4.6,
    "categories": ["kitchen", "coffee", "appliances"],
    "attributes": {"color": "silver", "watts": 1450, "pressure_bar": 15},
}


class Product:
    """A value that is not plain data (like a model instance): L1 keeps it pickled."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Product) and other.__dict__ == self.__dict__


def _configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(INSTALLED_APPS=[], USE_TZ=True, CACHES={})
        import django

        django.setup()


def _micro(ctx: Context) -> list[Result]:
    _configure_django()
    from django.core.cache.backends.locmem import LocMemCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    from djscale.cache import TieredCache

    cluster = ctx.factory({"project": {"name": "benchcache"}, "redis": {}}, parts=("redis",),
                          name="bench-cache-redis")
    host, port = cluster.address("redis")
    url = f"redis://{host}:{port}/0"
    tiered = TieredCache(url, {"KEY_PREFIX": "bench", "OPTIONS": {"L1_TIMEOUT": 600}})
    assert tiered.bus is not None and tiered.bus.wait_connected(5)
    locmem = LocMemCache("bench", {"KEY_PREFIX": "bench"})
    djredis = DjangoRedisCache(url, {"KEY_PREFIX": "bench2", "OPTIONS": {
        "CLIENT_CLASS": "django_redis.client.DefaultClient"}})
    tiered.set("product:123456", VALUE, 600)
    locmem.set("product:123456", VALUE, 600)
    djredis.set("product:123456", VALUE, 600)
    tiered.set("object:123456", Product(VALUE), 600)
    djredis.set("object:123456", Product(VALUE), 600)
    assert tiered.get("product:123456") == locmem.get("product:123456") == \
        djredis.get("product:123456") == VALUE
    hits_before = tiered.l1.hits

    number = 2000 if ctx.quick else 20000
    rounds = 3 if ctx.quick else 7
    local = interleaved({"tiered": lambda: tiered.get("product:123456"),
                         "locmem": lambda: locmem.get("product:123456")},
                        number=number, rounds=rounds)
    remote = interleaved({"tiered": lambda: tiered.get("product:123456"),
                          "django-redis": lambda: djredis.get("product:123456")},
                         number=max(200, number // 20), rounds=rounds)
    objects = interleaved({"tiered": lambda: tiered.get("object:123456"),
                           "django-redis": lambda: djredis.get("object:123456")},
                          number=max(200, number // 20), rounds=rounds)
    served_by_l1 = tiered.l1.hits - hits_before
    writes = interleaved({"tiered": lambda: tiered.set("write:1", VALUE, 600),
                          "django-redis": lambda: djredis.set("write:1", VALUE, 600)},
                         number=max(200, number // 20), rounds=rounds)
    us = 1e6
    return [
        Result(TOPIC, "L1 hit: TieredCache.get vs LocMemCache.get", value=1 / local["tiered"],
               baseline=1 / local["locmem"], unit="gets/s", baseline_name="LocMemCache.get",
               target=">= 1x (no slower)", met=local["tiered"] <= local["locmem"],
               notes=f"per get: TieredCache L1 {local['tiered'] * us:.2f} us, LocMemCache "
                     f"{local['locmem'] * us:.2f} us; a 9-field product dict; "
                     f"{served_by_l1} of the TieredCache gets were L1 hits"),
        Result(TOPIC, "L1 hit: TieredCache.get vs django-redis get",
               value=1 / remote["tiered"], baseline=1 / remote["django-redis"], unit="gets/s",
               baseline_name="django-redis get", target=">= 30x",
               met=remote["django-redis"] / remote["tiered"] >= 30,
               notes=f"per get: TieredCache L1 {remote['tiered'] * us:.2f} us, django-redis "
                     f"{remote['django-redis'] * us:.1f} us (loopback Redis)"),
        Result(TOPIC, "L1 hit of an object (pickled in L1) vs django-redis get",
               value=1 / objects["tiered"], baseline=1 / objects["django-redis"],
               unit="gets/s", baseline_name="django-redis get",
               notes=f"per get: TieredCache L1 {objects['tiered'] * us:.2f} us, django-redis "
                     f"{objects['django-redis'] * us:.1f} us; the same fields as attributes "
                     "of an object, which L1 unpickles on every hit"),
        Result(TOPIC, "write: TieredCache.set vs django-redis set",
               value=1 / writes["tiered"], baseline=1 / writes["django-redis"], unit="sets/s",
               baseline_name="django-redis set",
               notes=f"per set: TieredCache {writes['tiered'] * us:.1f} us, django-redis "
                     f"{writes['django-redis'] * us:.1f} us; one round trip each, TieredCache's "
                     "also publishes the numbered eviction (EVAL: INCR + PUBLISH) and fills L1"),
    ]


def _view(ctx: Context) -> list[Result]:
    data = {
        "project": {"name": "cachebench", "pythonpath": str(ROOT),
                    "settings": "tests.integration.cache_support.settings",
                    "wsgi": "tests.wsgi:application"},
        "postgres": {"database": "cachebench"},
        "redis": {},
        "app": {"servers": 1, "workers": 2},
    }
    cluster = ctx.factory(data, parts=("postgres", "redis", "migrate", "app"),
                          name="bench-cache-view")
    cluster.django_admin(
        "shell", "-c",
        "from tests.testapp.models import Note; Note.objects.bulk_create("
        "[Note(author=f'a{i % 10}', text='x' * 200) for i in range(2000)])",
        service="bench-cache-seed")
    host, port = cluster.address("app-1")
    urls = {"uncached": f"http://{host}:{port}/cache/notes-uncached/a1/",
            "cached": f"http://{host}:{port}/cache/notes/a1/"}
    seconds = 2 if ctx.quick else 5
    rounds = 1 if ctx.quick else 3
    wrk(urls["cached"], seconds=1, connections=4)  # warm both workers' caches
    wrk(urls["uncached"], seconds=1, connections=4)
    rps: dict[str, list[float]] = {k: [] for k in urls}
    errors = 0
    for _ in range(rounds):
        for name, url in urls.items():
            r = wrk(url, seconds=seconds, connections=16)
            rps[name].append(r.requests_per_second)
            errors += r.errors
    cached, uncached = statistics.median(rps["cached"]), statistics.median(rps["uncached"])
    return [Result(
        TOPIC, "DB-backed view on gunicorn: @cached vs uncached", value=cached,
        baseline=uncached, unit="req/s", baseline_name="uncached view", target=">= 3x",
        met=cached / uncached >= 3 and errors == 0,
        notes=f"50 of 2,000 rows from PostgreSQL as JSON; 1 gunicorn server, 2 workers, wrk "
              f"16 connections on the same machine; median of {rounds} alternating rounds; "
              f"{errors} errors")]


def run(ctx: Context) -> list[Result]:
    """Measure the three ratios of the cache issue."""
    return _micro(ctx) + _view(ctx)
