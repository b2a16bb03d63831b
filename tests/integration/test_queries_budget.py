"""Query budgets: views, URLs, settings and the pytest helper; every alias counts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _pytest.outcomes import Failed
from django.db import connections
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from djscale.errors import QueryBudgetExceeded
from djscale.testing.queries import assert_max_queries

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases="__all__")]

ROOT = Path(__file__).resolve().parents[2]


def policy(**queries: Any) -> override_settings:
    return override_settings(DJSCALE={"QUERIES": queries})


def test_a_view_over_its_decorated_budget_fails_listing_every_query_and_alias() -> None:
    with policy(BUDGET="raise"), pytest.raises(QueryBudgetExceeded) as info:
        Client().get("/queryapp/budget/decorated-2")
    message = str(info.value)
    assert "3 queries, budget 2 (default 2, shard1 1)" in message
    assert len(info.value.queries) == 3
    assert info.value.queries[2] == '[shard1] SELECT COUNT(*) FROM pg_class'


def test_a_view_within_its_decorated_budget_answers() -> None:
    with policy(BUDGET="raise"):
        assert Client().get("/queryapp/budget/decorated-3").status_code == 200


@pytest.mark.parametrize("url, ok", [("/queryapp/budget/url-2", False),
                                     ("/queryapp/budget/url-3", True)])
def test_a_budget_set_on_the_url_is_enforced_and_not_passed_to_the_view(
        url: str, ok: bool) -> None:
    with policy(BUDGET="raise"):
        if ok:
            assert Client().get(url).status_code == 200
        else:
            with pytest.raises(QueryBudgetExceeded, match="3 queries, budget 2"):
                Client().get(url)


def test_a_budget_set_by_url_name_in_settings_is_enforced() -> None:
    with policy(BUDGET="raise", BUDGETS={"budget-by-settings": 1}), \
            pytest.raises(QueryBudgetExceeded, match="3 queries, budget 1"):
        Client().get("/queryapp/budget/settings")


def test_log_mode_answers_and_counts_the_metric(caplog: pytest.LogCaptureFixture) -> None:
    labels = {"where": "budget-by-settings"}
    before = REGISTRY.get_sample_value("djscale_query_budget_exceeded_total", labels) or 0
    with policy(BUDGET="log", BUDGETS={"budget-by-settings": 2}), \
            caplog.at_level(logging.WARNING, "djscale.queries"):
        assert Client().get("/queryapp/budget/settings").status_code == 200
    assert any("3 queries, budget 2" in r.getMessage() for r in caplog.records
               if r.name == "djscale.queries")
    after = REGISTRY.get_sample_value("djscale_query_budget_exceeded_total", labels)
    assert after == before + 1


def _run(aliases: tuple[str, ...]) -> None:
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT %s::int AS answer", [42])


def test_assert_max_queries_fails_one_query_too_many_and_lists_the_queries() -> None:
    with pytest.raises(Failed) as info, assert_max_queries(2):
        _run(("default", "default_replica1", "shard2"))
    message = str(info.value)
    assert "3 queries, budget 2" in message
    assert "1. [default] SELECT %s::int AS answer" in message
    assert "2. [default_replica1] SELECT" in message
    assert "3. [shard2] SELECT" in message


def test_assert_max_queries_fixture_passes_within_the_budget(
        assert_max_queries: Any) -> None:
    with assert_max_queries(3) as budget:
        _run(("default", "default_replica1", "shard2"))
    assert budget.count == 3


def test_a_pytest_run_shows_the_failing_test_and_its_queries(tmp_path: Path) -> None:
    test_file = tmp_path / "test_budget_demo.py"
    test_file.write_text(textwrap.dedent('''
        import django
        django.setup()
        from django.db import connections
        from djscale.testing.queries import assert_max_queries

        def _one(alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1 AS one_query")

        def test_one_query_too_many():
            with assert_max_queries(2):
                for alias in ("default", "shard1", "default"):
                    _one(alias)

        def test_within_budget():
            with assert_max_queries(2):
                _one("default")
    '''))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:django", "-p", "no:cacheprovider",
         "-c", os.devnull, "--rootdir", str(tmp_path), "-q", str(test_file)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 failed, 1 passed" in out
    assert "query budget exceeded: 3 queries, budget 2 (default 2, shard1 1)" in out
    assert "1. [default] SELECT 1 AS one_query" in out
    assert "2. [shard1] SELECT 1 AS one_query" in out


def test_queries_of_the_same_context_in_another_thread_count() -> None:
    from asgiref.sync import async_to_sync, sync_to_async

    from djscale.queries import record_queries

    def in_a_worker_thread() -> None:
        try:
            _run(("default", "shard3"))
        finally:
            connections.close_all()

    with record_queries() as recorder:
        async_to_sync(sync_to_async(in_a_worker_thread, thread_sensitive=False))()
    assert [str(q) for q in recorder.queries] == [
        "[default] SELECT %s::int AS answer", "[shard3] SELECT %s::int AS answer"]
