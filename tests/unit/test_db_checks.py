"""System checks of the replica layer."""

from __future__ import annotations

from typing import Any

from djscale.db.checks import MIDDLEWARE_PATH, check_replica_middleware

UNAVAILABLE = "djscale.http.unavailable.DatabaseUnavailableMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"


def ids(settings: Any, middleware: list[str]) -> list[str]:
    settings.MIDDLEWARE = middleware
    return [str(m.id) for m in check_replica_middleware()]


def test_replicas_without_the_middleware_warn(settings: Any) -> None:
    assert ids(settings, [SESSIONS]) == ["djscale.W401"]


def test_the_middleware_last_is_fine(settings: Any) -> None:
    assert ids(settings, [SESSIONS, UNAVAILABLE, MIDDLEWARE_PATH]) == []


def test_an_exception_handler_after_it_warns(settings: Any) -> None:
    assert ids(settings, [SESSIONS, MIDDLEWARE_PATH, UNAVAILABLE]) == ["djscale.W402"]


def test_a_graphql_app_warns_while_posts_read_the_primary(settings: Any, monkeypatch: Any) -> None:
    from djscale.db import checks

    monkeypatch.setattr(checks, "_installed_apps", lambda: ["django.contrib.auth",
                                                            "graphene_django"])
    assert ids(settings, [SESSIONS, MIDDLEWARE_PATH]) == ["djscale.W403"]
    # conf rebuilds on setting_changed, which the fixture sends (and again when it restores)
    settings.DJSCALE = {**getattr(settings, "DJSCALE", {}), "PRIMARY_FOR_UNSAFE_METHODS": False}
    assert ids(settings, [SESSIONS, MIDDLEWARE_PATH]) == []
    monkeypatch.setattr(checks, "_installed_apps", lambda: ["django.contrib.auth"])
    assert ids(settings, [SESSIONS, MIDDLEWARE_PATH]) == []
