"""The scalability checklist as Django system checks (``manage.py check [--deploy]``).

Each rule has an id, a message saying what breaks at scale and a hint saying what to do.
They run with every ``manage.py check`` (tag ``djscale``; ``DEBUG`` only with ``--deploy``)
and through :func:`doctor`. Silence one with ``SILENCED_SYSTEM_CHECKS = ["djscale.W003"]``.

========  ==================================================================================
W001      sessions stored in files or a process-local cache with more than one app server
W002      the default cache is process-local (LocMem/file) with more than one app server
W003      a database without persistent connections or a pool (a connect per request)
W004      ``DEBUG = True`` (every query kept in memory; ``--deploy`` only)
W005      ``SECURE_PROXY_SSL_HEADER``/``USE_X_FORWARDED_*`` without trusted proxies
W006      replicas configured but no djscale database router installed
W008      edge middleware in an order that defeats it
W009      a cache key built from ``str(args)``/``repr`` (unhashed, unbounded, ambiguous)
W010      a counter done with ``cache.get`` then ``cache.set(x + 1)`` (lost updates)
W011      no readiness endpoint a load balancer could probe
W012      reused connections (persistent or pooled) without ``CONN_HEALTH_CHECKS``
E001      ``DJSCALE["TRUSTED_PROXIES"]`` holds something that is not an address
E002      ``DJSCALE["HEALTH"]`` or ``DJSCALE["PUBLIC_CACHE_PATHS"]`` holds an unusable value
E110      ``DJSCALE["QUERIES"]`` holds an unusable value
E120      any other ``DJSCALE`` key holds an unusable value
W120      ``DJSCALE`` has a key djscale does not know (misspelt?)
W121      a deprecated setting name (``DJSCALE_SESSIONS``, ``DJSCALE_CACHE_WARMERS``, ...)
========  ==================================================================================

E001, E002, E110, E120, W120 and W121 come from :func:`djscale.conf.check_settings`,
which validates every djscale setting once.

Media on one server's disk is checked by :mod:`djscale.storage.checks` (``djscale.W100``).
W009/W010 read the source of the project's own apps (not installed packages) with
:mod:`ast`; they never import or run it.

This module only inspects settings and source files: it opens no connections.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Warning, register
from django.urls import NoReverseMatch, reverse

# djscale.metrics switches prometheus_client to multiprocess mode under gunicorn; it must
# happen before any layer creates a metric, and this module is imported first thing in
# DjscaleConfig.ready().
from djscale import conf, metrics  # noqa: F401 - conf registers check_settings

__all__ = ["TAG", "doctor", "scan_source"]

TAG = "djscale"

_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.filebased.FileBasedCache",
)
_SESSION_MW = "django.contrib.sessions.middleware.SessionMiddleware"
_CACHE_MW = "djscale.http.cache_control.CacheControlMiddleware"
_PROXY_MW = "djscale.http.proxies.TrustedProxyMiddleware"
_HEALTH_MW = "djscale.http.health.HealthCheckMiddleware"
_STATIC_MWS = ("djscale.http.static.StaticFilesMiddleware",
               "whitenoise.middleware.WhiteNoiseMiddleware")


def _app_servers() -> int:
    return conf.get(validate=False).deployment.app_servers


def _middleware() -> list[str]:
    return list(getattr(settings, "MIDDLEWARE", None) or [])


# ------------------------------------------------------------------ settings rules


@register(TAG)
def check_sessions(app_configs: Sequence[AppConfig] | None = None,
                   **kwargs: Any) -> list[CheckMessage]:
    """W001: sessions every app server can read."""
    servers = _app_servers()
    if servers < 2:
        return []
    engine = getattr(settings, "SESSION_ENGINE", "django.contrib.sessions.backends.db")
    where = ""
    if engine.endswith(".file"):
        where = "files on each server's disk"
    elif engine.endswith((".cache", ".cached_db")) or engine == "djscale.sessions":
        alias = getattr(settings, "SESSION_CACHE_ALIAS", "default")
        backend = settings.CACHES.get(alias, {}).get("BACKEND", "")
        if backend in _LOCAL_CACHES:
            where = f"the process-local cache {alias!r} ({backend.rsplit('.', 1)[-1]})"
    if not where:
        return []
    return [Warning(
        f"Sessions are stored in {where}, but there are {servers} app servers: a user "
        "logged in on one server is logged out on the next.",
        hint="Use a shared store: SESSION_ENGINE 'django.contrib.sessions.backends.cache' "
             "with a Redis cache (djscale.settings.from_topology does this), 'db', or "
             "'signed_cookies'.",
        id="djscale.W001",
    )]


@register(TAG)
def check_shared_cache(app_configs: Sequence[AppConfig] | None = None,
                       **kwargs: Any) -> list[CheckMessage]:
    """W002: the default cache is shared by all app servers."""
    servers = _app_servers()
    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if servers < 2 or backend not in _LOCAL_CACHES:
        return []
    return [Warning(
        f"The default cache is {backend.rsplit('.', 1)[-1]}, local to each process, but "
        f"there are {servers} app servers: invalidations, rate limits and locks only reach "
        "one process.",
        hint="Use Redis (django.core.cache.backends.redis.RedisCache) or djscale's tiered "
             "cache, whose in-process level is invalidated across processes.",
        id="djscale.W002",
    )]


@register(TAG)
def check_connection_reuse(app_configs: Sequence[AppConfig] | None = None,
                           **kwargs: Any) -> list[CheckMessage]:
    """W003: databases keep connections (CONN_MAX_AGE) or pool them; W012: and check them."""
    found: list[CheckMessage] = []
    for alias, entry in settings.DATABASES.items():
        options: Any = entry.get("OPTIONS") or {}
        pooled = bool(options.get("pool")) if isinstance(options, dict) else False
        # DISABLE_SERVER_SIDE_CURSORS marks a connection through PgBouncer (which pools).
        behind_pooler = bool(entry.get("DISABLE_SERVER_SIDE_CURSORS"))
        age = entry.get("CONN_MAX_AGE", 0)
        if age == 0 and not pooled and not behind_pooler:
            found.append(Warning(
                f"Database {alias!r} opens a new connection for every request "
                "(CONN_MAX_AGE = 0, no pool): connecting costs more than most queries and "
                "PostgreSQL's max_connections runs out under load.",
                hint="Set CONN_MAX_AGE (e.g. 60) with CONN_HEALTH_CHECKS = True, or "
                     "OPTIONS = {'pool': {...}} (Django 5.1+ with psycopg 3), or PgBouncer.",
                obj=alias,
                id="djscale.W003",
            ))
        elif (age != 0 or pooled) and not entry.get("CONN_HEALTH_CHECKS", False):
            found.append(Warning(
                f"Database {alias!r} reuses connections without CONN_HEALTH_CHECKS: after a "
                "database restart or failover, every connection kept "
                f"{'in the pool' if pooled else 'by a worker'} fails the next request that "
                "uses it.",
                hint="Set CONN_HEALTH_CHECKS = True (with a pool, Django 5.1+ then checks "
                     "each connection as it leaves the pool).",
                obj=alias,
                id="djscale.W012",
            ))
    return found


@register(TAG, deploy=True)
def check_debug(app_configs: Sequence[AppConfig] | None = None,
                **kwargs: Any) -> list[CheckMessage]:
    """W004: DEBUG is off in production."""
    if not settings.DEBUG:
        return []
    return [Warning(
        "DEBUG = True: Django keeps every SQL query of a request in memory and error pages "
        "show settings; under load the workers grow until they are killed.",
        hint="Set DEBUG = False in production settings.",
        id="djscale.W004",
    )]


@register(TAG)
def check_proxy_headers(app_configs: Sequence[AppConfig] | None = None,
                        **kwargs: Any) -> list[CheckMessage]:
    """W005: forwarded headers are only believed from trusted proxies (E001: conf)."""
    networks = conf.get(validate=False).http.trusted_proxies
    uses = [name for name in ("SECURE_PROXY_SSL_HEADER", "USE_X_FORWARDED_HOST",
                              "USE_X_FORWARDED_PORT") if getattr(settings, name, None)]
    if not uses:
        return []
    if networks and _PROXY_MW in _middleware():
        return []
    why = "no trusted proxies are configured" if not networks else \
        f"{_PROXY_MW} is not in MIDDLEWARE"
    return [Warning(
        f"{', '.join(uses)} makes Django believe X-Forwarded-* headers from anyone, and "
        f"{why}: a client can claim HTTPS or another host.",
        hint=f"Add {_PROXY_MW} first in MIDDLEWARE and list your load balancers in "
             "DJSCALE['TRUSTED_PROXIES'] (it strips forwarded headers from anyone else).",
        id="djscale.W005",
    )]


@register(TAG)
def check_replica_router(app_configs: Sequence[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    """W006: configured replicas are used through a djscale router."""
    groups = conf.get(validate=False).replication.groups
    replicas = [alias for g in groups.values() for alias in g.replicas]
    if not replicas:
        return []
    routers = [r if isinstance(r, str) else f"{type(r).__module__}.{type(r).__name__}"
               for r in getattr(settings, "DATABASE_ROUTERS", [])]
    if any(r.startswith("djscale.") for r in routers):
        return []
    return [Warning(
        f"Replicas {', '.join(replicas)} are configured but no djscale database router is "
        "installed: every read goes to the primary (or a custom router ignores "
        "read-your-writes and replica lag).",
        hint="Add 'djscale.db.routers.PrimaryReplicaRouter' to DATABASE_ROUTERS "
             "(from_topology() does), or silence djscale.W006 if your router handles it.",
        id="djscale.W006",
    )]


@register(TAG)
def check_middleware_order(app_configs: Sequence[AppConfig] | None = None,
                           **kwargs: Any) -> list[CheckMessage]:
    """W008: the edge middleware sits where it can work."""
    mws = _middleware()
    found: list[CheckMessage] = []

    def pos(name: str) -> int:
        return mws.index(name) if name in mws else -1

    cache, session = pos(_CACHE_MW), pos(_SESSION_MW)
    if cache >= 0 and session >= 0 and cache > session:
        found.append(Warning(
            "CacheControlMiddleware comes after SessionMiddleware, so it cannot see the "
            "session cookie set on the way out and may mark such a response cacheable.",
            hint="Move djscale.http.cache_control.CacheControlMiddleware before "
                 "SessionMiddleware.", id="djscale.W008"))
    static = max(pos(m) for m in _STATIC_MWS)
    if cache >= 0 and static > cache:
        found.append(Warning(
            "The static files middleware comes after CacheControlMiddleware, so hashed "
            "static files lose 'public, immutable' for visitors with a session.",
            hint="Put the static files middleware before CacheControlMiddleware.",
            id="djscale.W008"))
    proxy = pos(_PROXY_MW)
    if proxy > 0 and any(pos(m) >= 0 and pos(m) < proxy for m in (
            "django.middleware.security.SecurityMiddleware", _SESSION_MW,
            "django.middleware.common.CommonMiddleware")):
        found.append(Warning(
            "TrustedProxyMiddleware runs after middleware that reads the client address, "
            "scheme or host.",
            hint="Make djscale.http.proxies.TrustedProxyMiddleware the first MIDDLEWARE.",
            id="djscale.W008"))
    return found


@register(TAG)
def check_readiness_endpoint(app_configs: Sequence[AppConfig] | None = None,
                             **kwargs: Any) -> list[CheckMessage]:
    """W011: a load balancer can ask this app whether it is ready."""
    if _HEALTH_MW in _middleware():
        return []
    try:
        reverse("djscale-health-ready")
        return []
    except NoReverseMatch:
        pass
    except Exception:  # noqa: BLE001 - a broken URLconf is reported by Django itself
        return []
    return [Warning(
        "No readiness endpoint: load balancers cannot take an app server whose database "
        "is down out of rotation, and keep sending it traffic that fails.",
        hint=f"Add {_HEALTH_MW} to MIDDLEWARE or path('', include('djscale.urls')) to "
             "your URLconf; point the load balancer at /health/ready.",
        id="djscale.W011",
    )]


# ------------------------------------------------------------------ source rules

_CACHE_METHODS = frozenset({"get", "set", "add", "get_or_set", "delete", "incr", "decr",
                            "touch", "has_key", "aget", "aset", "aadd", "aget_or_set"})
_ARG_NAMES = frozenset({"args", "kwargs"})


def _is_cache(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return "cache" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "cache" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        return _is_cache(node.value)
    return False


def _cache_call(node: ast.AST) -> tuple[str, ast.expr | None] | None:
    """``(method, key expression)`` when ``node`` is ``<cache>.<method>(key, ...)``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    if node.func.attr not in _CACHE_METHODS or not _is_cache(node.func.value):
        return None
    key = node.args[0] if node.args else next(
        (k.value for k in node.keywords if k.arg == "key"), None)
    return node.func.attr, key


def _unhashed(key: ast.expr) -> bool:
    for sub in ast.walk(key):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and \
                sub.func.id in ("str", "repr") and any(
                    isinstance(a, ast.Name) and a.id in _ARG_NAMES for a in sub.args):
            return True
        if isinstance(sub, ast.FormattedValue) and isinstance(sub.value, ast.Name) and \
                sub.value.id in _ARG_NAMES:
            return True
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mod | ast.Add) and any(
                isinstance(s, ast.Name) and s.id in _ARG_NAMES for s in (sub.left, sub.right)):
            return True
    return False


def _counter(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[int]:
    """Lines where ``func`` sets a cache key it read, to a value +/- something."""
    read: set[str] = set()
    lines = []
    for node in ast.walk(func):
        call = _cache_call(node)
        if call is None or call[1] is None:
            continue
        method, key = call[0], call[1]
        dumped = ast.dump(key)
        if method in ("get", "aget"):
            read.add(dumped)
        elif method in ("set", "aset") and dumped in read and isinstance(node, ast.Call):
            value = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "value"), None)
            if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add | ast.Sub):
                lines.append(node.lineno)
    return lines


def scan_source(source: str, filename: str = "<source>") -> list[CheckMessage]:
    """W009/W010 findings in one Python source text (syntax errors: no findings)."""
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return []
    found: list[CheckMessage] = []
    # Resolve `name = <expr>` assignments of the innermost function, so that
    # `key = str(args); cache.get(key)` is seen too.
    scope_of: dict[int, dict[str, ast.expr]] = {}
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in [tree, *functions]:  # inner functions come later and win
        assigned: dict[str, ast.expr] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                assigned[node.targets[0].id] = node.value
        for node in ast.walk(scope):
            scope_of[id(node)] = assigned
    for node in ast.walk(tree):
        call = _cache_call(node)
        key = call[1] if call is not None else None
        names = scope_of.get(id(node), {})
        if isinstance(key, ast.Name) and key.id in names:
            key = names[key.id]
        if key is not None and _unhashed(key):
            found.append(Warning(
                "Cache key built from str()/repr()/formatting of *args/**kwargs: keys are "
                "unbounded, may exceed the backend's key limit, and different arguments "
                "can produce the same text.",
                hint="Hash a canonical form of the arguments (djscale.cache's @cached does), "
                     "e.g. hashlib.sha256(json.dumps([args, kwargs], sort_keys=True)).",
                obj=f"{filename}:{getattr(node, 'lineno', 0)}",
                id="djscale.W009",
            ))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for line in _counter(node):
                found.append(Warning(
                    "Counter updated with cache.get() then cache.set(value + n): two "
                    "app servers doing this at once lose one of the updates.",
                    hint="Use cache.incr()/decr() (atomic in Redis), or an F() expression "
                         "update in the database.",
                    obj=f"{filename}:{line}",
                    id="djscale.W010",
                ))
    return found


def _installed_code(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    text = str(path.resolve())
    return any(text.startswith(str(Path(r).resolve())) for r in roots) or \
        "site-packages" in path.parts or "dist-packages" in path.parts


def _project_files(app_configs: Iterable[AppConfig]) -> Iterable[Path]:
    for config in app_configs:
        base = Path(config.path)
        if config.name.startswith(("django.", "djscale")) or _installed_code(base):
            continue
        for file in sorted(base.rglob("*.py")):
            if "migrations" not in file.parts and not any(
                    p.startswith(".") for p in file.relative_to(base).parts):
                yield file


@register(TAG)
def check_cache_usage(app_configs: Sequence[AppConfig] | None = None,
                      **kwargs: Any) -> list[CheckMessage]:
    """W009/W010: cache keys and counters in the project's own source."""
    configs = app_configs if app_configs is not None else apps.get_app_configs()
    found: list[CheckMessage] = []
    for file in _project_files(configs):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found.extend(scan_source(text, str(file)))
    return found


def doctor(*, deploy: bool = True) -> list[CheckMessage]:
    """Run djscale's checks (with the ``--deploy`` ones by default); for ``djscale doctor``."""
    from django.core.checks import run_checks

    return list(run_checks(tags=[TAG], include_deployment_checks=deploy))
