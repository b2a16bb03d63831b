"""``manage.py migrate_shards`` migrates every shard, reports each one, and is idempotent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FRESH = "djscale_fresh_shards"
PRIMARIES = ("default", "shard1", "shard2", "shard3")


def _admin(alias: str) -> psycopg.Connection[tuple[object, ...]]:
    db = settings.DATABASES[alias]
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                           dbname="postgres", autocommit=True, connect_timeout=5)


def _drop_all() -> None:
    for alias in PRIMARIES:
        with _admin(alias) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {FRESH} WITH (FORCE)")


@pytest.fixture
def fresh_databases(djscale_cluster: object) -> Iterator[None]:
    """An empty database of the same name on the main primary and every shard."""
    _drop_all()
    for alias in PRIMARIES:
        with _admin(alias) as conn:
            conn.execute(f"CREATE DATABASE {FRESH}")
    try:
        yield
    finally:
        _drop_all()


def _manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.shardapp.migrate_settings",
           "DJSCALE_FRESH_DB": FRESH, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _tables(alias: str) -> set[str]:
    db = settings.DATABASES[alias]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=FRESH,
                         connect_timeout=5) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


def test_one_command_migrates_every_shard_and_a_second_run_is_a_no_op(
        fresh_databases: None) -> None:
    main = _manage("migrate", "--database", "default", "-v", "0")
    assert main.returncode == 0, main.stderr

    first = _manage("migrate_shards")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    for alias in ("shard1", "shard2", "shard3"):
        line = next(x for x in lines if x.startswith(f"{alias}: "))
        assert "applied" in line and "shardapp.0001_initial" in line, first.stdout
        assert "djscale_sharding.0001_initial" in line
        tables = _tables(alias)
        assert {"shardapp_order", "shardapp_shardeduser", "djscale_shard_moves"} <= tables
        assert not tables & {"auth_user", "djscale_shard_map", "shardapp_userdirectory"}
    assert "shard map: shard1=342, shard2=341, shard3=341 logical shards" in first.stdout

    second = _manage("migrate_shards")
    assert second.returncode == 0, second.stderr
    for alias in ("shard1", "shard2", "shard3"):
        assert f"{alias}: up to date (no migrations to apply)" in second.stdout, second.stdout


def test_unknown_shard_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="'shard9' is not a shard: expected one of shard1, "
                                           "shard2, shard3"):
        call_command("migrate_shards", "--shard", "shard9")
