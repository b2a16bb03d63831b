"""Replicas and sharding say they need PostgreSQL (djscale.E300, djscale.E301)."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from djscale.db.engines import NEEDS_POSTGRES, check_postgres_parts

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

SQLITE = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}


def _ids() -> list[str]:
    return [m.id or "" for m in check_postgres_parts()]


def _with(**databases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**settings.DATABASES, **databases}


def test_the_test_project_on_postgresql_passes() -> None:
    assert _ids() == []


def test_a_replication_group_on_sqlite_says_replicas_need_postgresql() -> None:
    with override_settings(DATABASES=_with(default_replica1=SQLITE)):
        messages = check_postgres_parts()
    assert [m.id for m in messages] == ["djscale.E300"]
    assert "'default_replica1' (sqlite3)" in messages[0].msg
    assert NEEDS_POSTGRES in messages[0].msg


def test_sharding_on_a_sqlite_main_database_says_sharding_needs_postgresql() -> None:
    with override_settings(DATABASES=_with(default=SQLITE)):
        messages = [m for m in check_postgres_parts() if m.id == "djscale.E301"]
    assert len(messages) == 1
    assert "'default' is sqlite3" in messages[0].msg


def test_a_sqlite_project_without_replicas_or_sharding_has_nothing_to_fix() -> None:
    apps = [a for a in settings.INSTALLED_APPS if a != "djscale.sharding"]
    with override_settings(DATABASES={"default": SQLITE}, INSTALLED_APPS=apps,
                           DJSCALE_DERIVED={}, DJSCALE={}):
        assert _ids() == []
