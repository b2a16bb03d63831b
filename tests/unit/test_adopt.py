"""``djscale init``'s pure parts: the middleware order and the files it writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from djscale.adopt import (
    CACHE_CONTROL,
    EDGE_MIDDLEWARE,
    REPLICA,
    SESSION,
    UNAVAILABLE,
    Postgres,
    Project,
    Redis,
    middleware_order,
    render_local_toml,
    render_toml,
)
from djscale.topology import merge_layers, parse

STARTPROJECT = [
    "django.middleware.security.SecurityMiddleware",
    SESSION,
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
WHITENOISE = "whitenoise.middleware.WhiteNoiseMiddleware"


def _project(**changes: object) -> Project:
    base: dict[str, object] = dict(
        root=Path("/srv/shop"), settings_module="shop.settings", settings_file=None,
        name="shop", wsgi="shop.wsgi:application", engine="", postgres=None, redis=None,
        broker="", broker_note="", broker_password_env="", celery_app="",
        session_engine="django.contrib.sessions.backends.db", session_engine_set=False,
        middleware=list(STARTPROJECT), installed_apps=[], has_base_dir=True,
        uses_topology=False, other_databases=[])
    base.update(changes)
    return Project(**base)  # type: ignore[arg-type]


def test_edge_middleware_comes_first_and_cache_control_right_before_sessions() -> None:
    order = middleware_order(STARTPROJECT, postgres=True)
    assert order[:4] == list(EDGE_MIDDLEWARE)
    assert order[order.index(SESSION) - 1] == CACHE_CONTROL
    assert order[-2:] == [UNAVAILABLE, REPLICA]
    assert [m for m in order if m in STARTPROJECT] == STARTPROJECT


def test_static_files_stay_before_cache_control_and_nothing_is_listed_twice() -> None:
    existing = [REPLICA, STARTPROJECT[0], SESSION, WHITENOISE, CACHE_CONTROL]
    order = middleware_order(existing, postgres=True)
    assert order.index(WHITENOISE) < order.index(CACHE_CONTROL) < order.index(SESSION)
    assert len(order) == len(set(order))


def test_without_postgresql_no_replica_middleware_is_added() -> None:
    order = middleware_order(STARTPROJECT, postgres=False)
    assert REPLICA not in order and UNAVAILABLE not in order


def test_without_session_middleware_cache_control_follows_security() -> None:
    order = middleware_order(["django.middleware.security.SecurityMiddleware",
                              "django.middleware.common.CommonMiddleware"], postgres=False)
    assert order.index(CACHE_CONTROL) == order.index(
        "django.middleware.security.SecurityMiddleware") + 1


def test_a_sqlite_project_file_keeps_its_databases() -> None:
    text = render_toml(_project(engine="django.db.backends.sqlite3"))
    data = tomllib.loads(text)
    assert data["postgres"] == {"enabled": False}
    assert not parse(data).postgres.enabled
    assert "replicas and sharding need PostgreSQL" in text
    assert render_local_toml(_project(engine="django.db.backends.sqlite3")) is None


@pytest.fixture
def production() -> Project:
    return _project(
        engine="django.db.backends.postgresql",
        postgres=Postgres(host="db.internal", port=5433, database="shop", user="shop",
                          conn_max_age=60, password_env="SHOP_DB_PASSWORD",
                          ssl={"sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem"},
                          options={"application_name": "shop", "keepalives_idle": 30}),
        redis=Redis(host="cache.internal", port=6380, alias="default",
                    backend="django_redis.cache.RedisCache", tls=True, username="app",
                    password_env="REDIS_PASSWORD"),
        broker="amqp://guest@mq.internal:5672//", broker_password_env="MQ_PASSWORD",
        celery_app="shop.celery:app")


def test_a_production_project_file_names_where_secrets_are_never_the_secrets(
        production: Project) -> None:
    topo = parse(tomllib.loads(render_toml(production)))
    pg = topo.postgres
    assert (pg.host, pg.port, pg.password_env, pg.sslmode, pg.sslrootcert) == (
        "db.internal", 5433, "SHOP_DB_PASSWORD", "verify-full", "/etc/ssl/ca.pem")
    assert dict(pg.options) == {"application_name": "shop", "keepalives_idle": 30}
    rd = topo.redis
    assert (rd.host, rd.port, rd.tls, rd.username, rd.password_env) == (
        "cache.internal", 6380, True, "app", "REDIS_PASSWORD")
    assert (topo.celery.broker, topo.celery.broker_password_env, topo.celery.app) == (
        "amqp://guest@mq.internal:5672//", "MQ_PASSWORD", "shop.celery:app")


def test_the_local_profile_moves_every_server_to_the_local_cluster(
        production: Project) -> None:
    base = tomllib.loads(render_toml(production))
    layer = tomllib.loads(render_local_toml(production) or "")
    assert layer.pop("extends") == "djscale.toml"
    topo = parse(merge_layers(base, layer))
    assert (topo.postgres.host, topo.postgres.port, topo.postgres.password_env,
            topo.postgres.sslmode, topo.postgres.sslrootcert) == ("127.0.0.1", "auto", "", "", "")
    assert (topo.redis.port, topo.redis.tls, topo.redis.username, topo.redis.password_env) == (
        "auto", False, "", "")
    assert (topo.celery.broker, topo.celery.broker_password_env) == ("", "")
