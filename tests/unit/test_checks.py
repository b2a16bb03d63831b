"""Each scalability check fires on settings that break its rule and is silent otherwise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from djscale import checks, conf

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}


def _ids(check: Callable[..., list[Any]], **kwargs: Any) -> list[str]:
    return [m.id for m in check(**kwargs)]


def _djscale(**extra: Any) -> dict[str, Any]:
    # The project's DJSCALE holds only overrides: djscale.conf merges it over
    # DJSCALE_DERIVED (from_topology's part).
    return dict(extra)


def _db(**entry: Any) -> dict[str, Any]:
    return {**settings.DATABASES, "default": {**settings.DATABASES["default"], **entry}}


BREAKING: list[tuple[str, Callable[..., list[Any]], dict[str, Any]]] = [
    ("djscale.W001", checks.check_sessions,
     {"SESSION_ENGINE": "django.contrib.sessions.backends.file"}),
    ("djscale.W001", checks.check_sessions,
     {"CACHES": {**settings.CACHES, "sessions": LOCMEM}}),
    ("djscale.W001", checks.check_sessions,
     {"SESSION_ENGINE": "djscale.sessions", "CACHES": {**settings.CACHES, "sessions": LOCMEM}}),
    ("djscale.W002", checks.check_shared_cache,
     {"CACHES": {**settings.CACHES, "default": LOCMEM}}),
    ("djscale.W003", checks.check_connection_reuse,
     {"DATABASES": _db(CONN_MAX_AGE=0)}),
    ("djscale.W012", checks.check_connection_reuse,
     {"DATABASES": _db(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=False)}),
    ("djscale.W012", checks.check_connection_reuse,
     {"DATABASES": _db(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False, OPTIONS={"pool": True})}),
    ("djscale.W004", checks.check_debug, {"DEBUG": True}),
    ("djscale.W005", checks.check_proxy_headers,
     {"SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
      "DJSCALE": _djscale(TRUSTED_PROXIES=[])}),
    ("djscale.W005", checks.check_proxy_headers,
     {"USE_X_FORWARDED_HOST": True,
      "MIDDLEWARE": [m for m in settings.MIDDLEWARE if "proxies" not in m]}),
    ("djscale.E001", conf.check_settings,
     {"DJSCALE": _djscale(TRUSTED_PROXIES=["lb.example.com"])}),
    ("djscale.E002", conf.check_settings,
     {"DJSCALE": _djscale(HEALTH={"TIMEOUT": "soon"})}),
    ("djscale.E002", conf.check_settings,
     {"DJSCALE": _djscale(HEALTH={"TIMEOUTS": 1})}),
    ("djscale.E002", conf.check_settings,
     {"DJSCALE": _djscale(PUBLIC_CACHE_PATHS=[("^/x", -5)])}),
    ("djscale.E002", conf.check_settings,
     {"DJSCALE": _djscale(PUBLIC_CACHE_PATHS=[("(unclosed", 5)])}),
    ("djscale.W006", checks.check_replica_router, {"DATABASE_ROUTERS": []}),
    ("djscale.W008", checks.check_middleware_order,
     {"MIDDLEWARE": ["django.contrib.sessions.middleware.SessionMiddleware",
                     "djscale.http.cache_control.CacheControlMiddleware"]}),
    ("djscale.W008", checks.check_middleware_order,
     {"MIDDLEWARE": ["djscale.http.cache_control.CacheControlMiddleware",
                     "djscale.http.static.StaticFilesMiddleware"]}),
    ("djscale.W008", checks.check_middleware_order,
     {"MIDDLEWARE": ["django.middleware.common.CommonMiddleware",
                     "djscale.http.proxies.TrustedProxyMiddleware"]}),
    ("djscale.W011", checks.check_readiness_endpoint,
     {"MIDDLEWARE": [], "ROOT_URLCONF": "tests.edgeapp.urls"}),
]


@pytest.mark.parametrize(("check_id", "check", "breaking"), BREAKING,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BREAKING)])
def test_check_fires_on_settings_that_break_it(check_id: str, check: Callable[..., list[Any]],
                                               breaking: dict[str, Any]) -> None:
    with override_settings(**breaking):
        assert check_id in _ids(check)
    # ... and is silent on the test project's own settings
    assert _ids(check) == []


def test_one_app_server_may_keep_local_sessions_and_cache() -> None:
    with override_settings(DJSCALE=_djscale(APP_SERVERS=1), CACHES={
            "default": LOCMEM, "sessions": LOCMEM}):
        assert _ids(checks.check_sessions) == _ids(checks.check_shared_cache) == []


def test_pooled_connections_are_fine() -> None:
    with override_settings(DATABASES=_db(CONN_MAX_AGE=0, OPTIONS={"pool": True})):
        assert _ids(checks.check_connection_reuse) == []


BAD_CODE = '''
from django.core.cache import cache

def cached(func):
    def wrapper(*args, **kwargs):
        key = f"{func.__name__}:{args}:{kwargs}"
        hit = cache.get(f"{func.__name__}:{args}")
        if hit is None:
            hit = func(*args, **kwargs)
            cache.set("fn:" + str(args), hit)
        return hit
    return wrapper

def count_view(request):
    views = cache.get("views", 0)
    cache.set("views", views + 1)
'''

GOOD_CODE = '''
from django.core.cache import cache

def count_view(request, key):
    cache.incr("views")
    value = cache.get(key)
    cache.set(key, value)
'''


def test_scan_finds_unhashed_keys_and_get_set_counters() -> None:
    found = checks.scan_source(BAD_CODE, "bad.py")
    assert [m.id for m in found].count("djscale.W009") == 2
    counters = [m for m in found if m.id == "djscale.W010"]
    assert [m.obj for m in counters] == ["bad.py:16"]
    assert checks.scan_source(GOOD_CODE, "good.py") == []
    assert checks.scan_source("def broken(:", "x.py") == []


def test_source_check_reads_project_apps(tmp_path: Path) -> None:
    (tmp_path / "views.py").write_text(BAD_CODE)
    app = SimpleNamespace(name="shop", path=str(tmp_path))
    assert {"djscale.W009", "djscale.W010"} <= set(
        _ids(checks.check_cache_usage, app_configs=[app]))
    # the test project's own apps are clean
    assert _ids(checks.check_cache_usage) == []


def test_doctor_runs_the_djscale_checks_including_deploy_ones() -> None:
    with override_settings(DEBUG=True):
        assert "djscale.W004" in [m.id for m in checks.doctor()]


def test_a_key_assigned_to_a_variable_is_followed_within_its_function_only() -> None:
    code = '''
from django.core.cache import cache

def bad(*args):
    key = "f:" + str(args)
    return cache.get(key)

def good(user_id):
    key = f"user:{user_id}"
    return cache.get(key)
'''
    found = checks.scan_source(code, "m.py")
    assert [m.obj for m in found] == ["m.py:6"]
