"""Read-your-writes tokens travel into Celery tasks (real worker, Redis broker)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from django.db import connections

from djscale import conf
from djscale.cluster import LocalCluster
from djscale.db import consistency, read_alias
from tests.integration.helpers import replay_paused
from tests.integration.test_replicas import (  # noqa: F401 - fixtures
    djscale_settings,
    ready,
)
from tests.testapp.models import Note

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

redis_url = conf.get().cache.redis_urls[0].rsplit("/", 1)[0]
app = Celery("replicas_test", broker=f"{redis_url}/3", backend=f"{redis_url}/4")
app.conf.task_default_queue = "djscale-replicas-test"


@app.task(name="tests.replicas.where_reads_go")  # type: ignore[untyped-decorator]  # celery
def where_reads_go(author: str) -> tuple[str, int]:
    """Where this task's reads go, and whether it sees ``author``'s notes."""
    try:
        return read_alias("default"), Note.objects.filter(author=author).count()
    finally:
        connections.close_all()  # the worker thread must not keep the test database open


@pytest.fixture(scope="module")
def worker() -> Iterator[Any]:
    # start_worker sets up Celery's logging: it sets the root logger to ERROR and replaces
    # its handlers, which silences every later test's warnings (caplog saw nothing).
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False,
                          shutdown_timeout=10) as w:
            yield w
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def test_a_task_sent_after_a_write_reads_it_while_other_tasks_use_replicas(
        ready: LocalCluster, worker: Any) -> None:  # noqa: F811 - the imported fixture
    with replay_paused(ready):
        with consistency.scope():  # a request that writes, then sends a task
            Note.objects.create(author="celery", text="x")
            mine = where_reads_go.delay("celery").get(timeout=30)
        with consistency.scope():  # a request that did not write
            theirs = where_reads_go.delay("celery").get(timeout=30)
    assert mine == ["default", 1]
    assert theirs[0] in ("default_replica1", "default_replica2")
    assert theirs[1] == 0  # the replica has not replayed the write
