"""N+1 detection on real views over the real primary + replicas.

The lazy loops run their queries through the router, on the replicas: a loop spread
over two replicas is still one N+1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from djscale.errors import NPlusOneDetected
from djscale.queries import Finding
from tests.queryapp import fixtures

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases="__all__")]

VIEWS = Path(__file__).resolve().parents[1] / "queryapp/views.py"


def _line(marker: str) -> int:
    for number, text in enumerate(VIEWS.read_text().splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(marker)


@pytest.fixture(scope="module")
def library(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    yield from fixtures.library(django_db_blocker)


def policy(**queries: Any) -> override_settings:
    return override_settings(DJSCALE={"QUERIES": queries})


def test_lazy_loop_over_50_books_is_flagged_with_model_field_and_line(library: None) -> None:
    with policy(N_PLUS_ONE="raise"), pytest.raises(NPlusOneDetected) as info:
        Client().get("/queryapp/books/lazy")
    finding = info.value.finding
    assert isinstance(finding, Finding) and finding.site is not None
    assert (finding.model, finding.field) == ("Book", "author")
    assert finding.site.filename == str(VIEWS)
    assert finding.site.lineno == _line("# LAZY-FORWARD")
    assert f"tests/queryapp/views.py:{_line('# LAZY-FORWARD')}" in str(info.value)
    assert "select_related('author')" in str(info.value)


def test_log_mode_reports_all_50_lazy_loads_once_and_counts_the_metric(
        library: None, caplog: pytest.LogCaptureFixture) -> None:
    labels = {"relation": "Book.author", "where": "books-lazy"}
    before = REGISTRY.get_sample_value("djscale_n_plus_one_total", labels) or 0
    with policy(N_PLUS_ONE="log", SAMPLE_RATE=1.0), \
            caplog.at_level(logging.WARNING, logger="djscale.queries"):
        response = Client().get("/queryapp/books/lazy")
    assert response.status_code == 200
    assert len(response.json()["authors"]) == fixtures.BOOKS
    [record] = [r for r in caplog.records if r.name == "djscale.queries"]
    message = record.getMessage()
    assert "Book.author loaded lazily 50 times" in message
    assert f"views.py:{_line('# LAZY-FORWARD')}" in message
    # Wherever the router sent the lookups (primary or replicas), they are one loop.
    assert re.search(r" on default(_replica\d)?(, default_replica\d)*", message)
    assert REGISTRY.get_sample_value("djscale_n_plus_one_total", labels) == before + 1


def test_the_same_view_with_select_related_is_not_flagged(
        library: None, caplog: pytest.LogCaptureFixture) -> None:
    with policy(N_PLUS_ONE="raise"), caplog.at_level(logging.WARNING, "djscale.queries"):
        response = Client().get("/queryapp/books/eager")
    assert response.status_code == 200
    assert len(response.json()["authors"]) == fixtures.BOOKS
    assert not [r for r in caplog.records if r.name == "djscale.queries"]


def test_reverse_relation_in_a_loop_is_flagged_with_prefetch_related(library: None) -> None:
    with policy(N_PLUS_ONE="raise"), pytest.raises(NPlusOneDetected) as info:
        Client().get("/queryapp/authors/lazy")
    finding = info.value.finding
    assert isinstance(finding, Finding) and finding.site is not None
    assert (finding.model, finding.field) == ("Author", "book_set")
    assert finding.site.lineno == _line("# LAZY-REVERSE")
    assert "prefetch_related('book_set')" in str(info.value)


@pytest.mark.parametrize("url", ["/queryapp/authors/deliberate",
                                 "/queryapp/authors/deliberate-decorated"])
def test_two_deliberate_queries_in_a_loop_marked_allowed_are_not_flagged(
        library: None, url: str) -> None:
    with policy(N_PLUS_ONE="raise"):
        response = Client().get(url)
    assert response.status_code == 200
    assert len(response.json()) == 10


def test_the_same_loop_without_the_mark_is_flagged(library: None) -> None:
    with policy(N_PLUS_ONE="raise"), pytest.raises(NPlusOneDetected) as info:
        Client().get("/queryapp/authors/unmarked")
    finding = info.value.finding
    assert isinstance(finding, Finding) and finding.site is not None
    assert (finding.model, finding.field) == ("Author", "id")
    assert "Author.id queried 3 times" in str(info.value)
    assert "_two_queries_per_author" in str(info.value)
    assert "in_bulk" in str(info.value)


def test_the_detector_guards_any_block_of_code(library: None) -> None:
    from djscale.queries import NPlusOneDetector
    from tests.queryapp.models import Book

    with NPlusOneDetector(mode="log", threshold=3) as detector:
        titles = [(b.title, b.author.name) for b in Book.objects.order_by("id")[:7]]
    [finding] = detector.findings()
    assert finding.site is not None
    assert len(titles) == 7
    assert (str(finding.relation), finding.count) == ("Book.author", 7)
    assert finding.site.function == "<listcomp>"  # the comprehension line is the loop


@pytest.mark.parametrize("queries", [{"N_PLUS_ONE": "off"},
                                     {"N_PLUS_ONE": "log", "SAMPLE_RATE": 0}])
def test_off_or_unsampled_requests_report_nothing(
        library: None, caplog: pytest.LogCaptureFixture, queries: dict[str, Any]) -> None:
    with policy(**queries), caplog.at_level(logging.WARNING, "djscale.queries"):
        assert Client().get("/queryapp/books/lazy").status_code == 200
    assert not [r for r in caplog.records if r.name == "djscale.queries"]


def test_a_celery_task_with_a_lazy_loop_is_flagged(
        library: None, caplog: pytest.LogCaptureFixture) -> None:
    from celery import Celery

    from djscale.queries import celery as hooks
    from tests.queryapp.models import Book

    app = Celery("queries-test", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="queryapp.author_names")  # type: ignore[untyped-decorator]  # celery: no types
    def author_names() -> list[str]:
        return [b.author.name for b in Book.objects.order_by("id")[:20]]

    hooks.install()
    with policy(N_PLUS_ONE="raise"):
        result = author_names.apply()
    assert isinstance(result.result, NPlusOneDetected)
    assert "task:queryapp.author_names" in str(result.result)
    with policy(N_PLUS_ONE="log", SAMPLE_RATE=1.0), \
            caplog.at_level(logging.WARNING, "djscale.queries"):
        assert len(author_names.apply().get()) == 20
    [record] = [r for r in caplog.records if r.name == "djscale.queries"]
    assert "Book.author loaded lazily 20 times" in record.getMessage()


def test_a_process_that_imports_celery_before_django_gets_the_task_hooks() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import celery, django; django.setup(); "
            "from celery.signals import task_prerun, task_postrun; "
            "print(sorted(str(k[0]) for s in (task_prerun, task_postrun) "
            "for k in s.receivers if 'djscale.queries' in str(k[0])))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=root, timeout=120, check=True).stdout
    assert "djscale.queries.prerun" in out and "djscale.queries.postrun" in out
