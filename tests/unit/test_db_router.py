"""PrimaryReplicaRouter's answers, the settings it reads, and write detection."""

from __future__ import annotations

from typing import Any

import pytest

from djscale import conf
from djscale.db import config, consistency
from djscale.db.routers import PrimaryReplicaRouter
from djscale.db.signals import detect_writes
from djscale.errors import ConfigurationError
from tests.testapp.models import Note


def note_from(alias: str) -> Note:
    note = Note(author="a")
    note._state.db = alias
    return note


def test_migrations_never_run_on_replicas() -> None:
    router = PrimaryReplicaRouter()
    assert router.allow_migrate("default_replica1", "testapp") is False
    assert router.allow_migrate("default", "testapp") is None
    assert router.allow_migrate("unknown_alias", "testapp") is None


def test_writes_go_to_the_primary_of_the_instance_group() -> None:
    router = PrimaryReplicaRouter()
    assert router.db_for_write(Note) == "default"
    assert router.db_for_write(Note, instance=note_from("default_replica2")) == "default"


def test_relations_are_allowed_within_a_group_only() -> None:
    router = PrimaryReplicaRouter()
    assert router.allow_relation(note_from("default"), note_from("default_replica1")) is True
    assert router.allow_relation(note_from("default"), note_from("shard1")) is None


def _groups_with(**changes: Any) -> dict[str, Any]:
    djscale = conf.merged()
    djscale["REPLICATION_GROUPS"]["default"].update(changes)
    return djscale


@pytest.mark.parametrize(("changes", "message"), [
    ({"POLICY": "fastest"}, "POLICY"),
    ({"FALLBACK": "panic"}, "FALLBACK"),
    ({"REPLICAS": ["nope"]}, "'nope'"),
    ({"WEIGHTS": {"default_replica1": -1}}, "WEIGHTS"),
])
def test_bad_group_settings_raise_a_clear_error(settings: Any, changes: dict[str, Any],
                                                message: str) -> None:
    settings.DJSCALE = _groups_with(**changes)
    with pytest.raises(ConfigurationError, match=message):
        config.groups()


def test_unknown_group_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="known: default"):
        config.group("nosuch")


def test_group_of_finds_primaries_and_replicas() -> None:
    assert config.group_of("default_replica2").name == "default"  # type: ignore[union-attr]
    assert config.group_of("nosuch") is None


@pytest.mark.parametrize(("sql", "write"), [
    ("SELECT 1", False),
    ("  select * from t", False),
    ("SAVEPOINT s1", False),
    ("RELEASE SAVEPOINT s1", False),
    ("INSERT INTO t VALUES (1)", True),
    ("UPDATE t SET a = 1", True),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", True),
    ("TRUNCATE t", True),
])
def test_statements_that_are_not_reads_count_as_writes(sql: str, write: bool) -> None:
    class Conn:
        alias = "default"

    with consistency.scope() as state:
        detect_writes(lambda *a: None, sql, None, False, {"connection": Conn()})
        assert (state.dirty == {"default"}) is write
