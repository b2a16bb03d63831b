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
