"""Read/write splitting on the shared cluster's real primary + 2 streaming replicas.

Where a query ran is proven from the servers' own ``pg_stat_statements`` (reset on every
server, then the reads of ``testapp_note`` counted per server), never from the router's
return value. (A unique column alias cannot mark a query: pg_stat_statements ignores
aliases when it groups statements.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from djscale import conf
from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.db import consistency, failover, read_alias, use_primary, use_replica
from djscale.db.failover import failover_reads
from djscale.db.pool import ReplicaHealth, get_pool
from tests.integration.helpers import connect, replay_paused, wait_replayed
from tests.testapp.models import Note

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

SERVERS = ("pg-default", "pg-default-replica1", "pg-default-replica2")
REPLICAS = ("pg-default-replica1", "pg-default-replica2")


# ---------------------------------------------------------------------- test views


@csrf_exempt
def notes_view(request: HttpRequest, marker: str) -> JsonResponse:
    """POST: write a note; GET: read notes of ``marker`` ."""
    if request.method == "POST":
        Note.objects.create(author=marker, text=request.POST.get("text", ""))
    return JsonResponse({"texts": read_notes(marker)})


urlpatterns = [path("notes/<str:marker>", notes_view)]


# ---------------------------------------------------------------------- helpers


READS = 'SELECT "testapp_note"."text"%FROM "testapp_note"%'
INSERTS = 'INSERT INTO "testapp_note"%'


def reset_stats(cluster: LocalCluster) -> None:
    for service in SERVERS:
        with connect(cluster, service) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")


def calls(cluster: LocalCluster, pattern: str = READS,
          services: tuple[str, ...] = SERVERS) -> dict[str, int]:
    """How many statements like ``pattern`` each server executed since reset_stats()."""
    seen = {}
    for service in services:
        with connect(cluster, service) as conn:
            row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                               "WHERE query LIKE %s", (pattern,)).fetchone()
        seen[service] = int(row[0]) if row else 0
    return seen


def usable_replicas() -> list[str]:
    pool = get_pool("default")
    assert pool is not None
    return pool.usable()


def wait_pool(condition: Any, timeout: float = 10) -> None:
    assert wait_until(condition, timeout=timeout), get_pool("default").health()  # type: ignore[union-attr]


def marker() -> str:
    return "m_" + uuid.uuid4().hex[:12]


def read_notes(author: str) -> list[str]:
    return list(Note.objects.filter(author=author).values_list("text", flat=True))


@pytest.fixture
def djscale_settings(settings: Any) -> Iterator[dict[str, Any]]:
    """Fast replica probes; tests edit the returned copy and assign it back."""
    settings.DJSCALE = {**conf.merged(), "REPLICA_REFRESH_SECONDS": 0.2}
    yield settings.DJSCALE


@pytest.fixture
def ready(djscale_cluster: LocalCluster, djscale_settings: dict[str, Any]) -> LocalCluster:
    """Both replicas caught up and seen as usable by this process's pool."""
    wait_replayed(djscale_cluster)
    wait_pool(lambda: len(usable_replicas()) == 2)
    return djscale_cluster


# ---------------------------------------------------------------------- routing


def test_reads_go_to_replicas_and_writes_to_the_primary(ready: LocalCluster) -> None:
    tag = marker()
    reset_stats(ready)
    with consistency.scope():  # a fresh request that has not written
        for _ in range(30):
            read_notes(tag)
    seen = calls(ready)
    assert seen["pg-default"] == 0, seen
    assert seen["pg-default-replica1"] > 0 and seen["pg-default-replica2"] > 0, seen
    assert sum(seen.values()) == 30

    for i in range(5):
        Note.objects.create(author=tag, text=str(i))
    with psycopg.connect(**_test_db_kwargs("default")) as conn:
        assert conn.execute("SELECT count(*) FROM testapp_note WHERE author = %s",
                            (tag,)).fetchone() == (5,)
    assert calls(ready, INSERTS) == {"pg-default": 5, "pg-default-replica1": 0,
                                     "pg-default-replica2": 0}


def _test_db_kwargs(alias: str) -> dict[str, Any]:
    s = connections[alias].settings_dict
    return {"host": s["HOST"], "port": s["PORT"], "user": s["USER"], "dbname": s["NAME"],
            "autocommit": True}


def test_inside_a_request_that_wrote_and_inside_atomic_reads_go_to_the_primary(
        ready: LocalCluster) -> None:
    with consistency.scope():
        assert read_alias("default") != "default"
        Note.objects.create(author="w", text="x")
        assert read_alias("default") == "default"
        reset_stats(ready)
        read_notes("w")
    assert calls(ready)["pg-default"] == 1

    with consistency.scope():
        with transaction.atomic():
            assert read_alias("default") == "default"
        with use_replica():
            assert read_alias("default") != "default"
        with use_primary():
            assert read_alias("default") == "default"


def test_use_primary_and_use_replica_work_as_decorators_sync_and_async(
        ready: LocalCluster) -> None:
    import asyncio

    @use_primary
    def sync_read() -> str:
        return read_alias("default")

    @use_primary
    async def async_read() -> str:
        return read_alias("default")

    async def both() -> tuple[str, str]:
        async with use_primary():
            inside = read_alias("default")
        return inside, await async_read()

    with consistency.scope():
        assert sync_read() == "default"
        assert asyncio.run(both()) == ("default", "default")
        assert read_alias("default") != "default"


# ---------------------------------------------------------------------- read-your-writes


@override_settings(ROOT_URLCONF=__name__)
def test_a_user_reads_their_own_write_on_the_next_request_while_replicas_are_paused(
        ready: LocalCluster) -> None:
    writer, other = Client(), Client()
    tag = marker()
    with replay_paused(ready):
        answer = writer.post(f"/notes/{tag}", {"text": "mine"})
        assert answer.status_code == 200
        assert "djscale_lsn" in answer.cookies
        assert answer.headers["X-Djscale-Lsn"]

        reset_stats(ready)
        mine = writer.get(f"/notes/{tag}").json()["texts"]
        after_writer = calls(ready)
        theirs = other.get(f"/notes/{tag}").json()["texts"]
        after_other = calls(ready)

    assert mine == ["mine"]
    assert after_writer == {"pg-default": 1, "pg-default-replica1": 0,
                            "pg-default-replica2": 0}  # the primary answered
    assert theirs == []  # a replica answered: it has not replayed the write
    assert after_other["pg-default"] == after_writer["pg-default"]
    assert sum(after_other[s] - after_writer[s] for s in REPLICAS) == 1


@override_settings(ROOT_URLCONF=__name__)
def test_the_token_also_travels_in_a_header_for_api_clients(ready: LocalCluster) -> None:
    tag = marker()
    with replay_paused(ready):
        token = Client().post(f"/notes/{tag}", {"text": "api"}).headers["X-Djscale-Lsn"]
        with_header = Client(headers={"X-Djscale-Lsn": token}).get(f"/notes/{tag}")
        forged = Client(headers={"X-Djscale-Lsn": token[:-2] + "xx"}).get(f"/notes/{tag}")
    assert with_header.json()["texts"] == ["api"]
    assert forged.json()["texts"] == []  # a bad signature is ignored, not an error


def test_after_the_replicas_replay_the_write_the_user_reads_from_them_again(
        ready: LocalCluster) -> None:
    Note.objects.create(author="later", text="x")
    tokens = consistency.handoff_tokens()
    assert set(tokens) == {"default"}
    with consistency.scope(tokens):
        wait_replayed(ready)
        wait_pool(lambda: read_alias("default") != "default")


# ---------------------------------------------------------------------- health


def test_a_replica_over_max_lag_is_skipped(ready: LocalCluster, settings: Any) -> None:
    djscale = conf.merged()
    djscale["REPLICATION_GROUPS"]["default"]["MAX_LAG_SECONDS"] = 0.5
    settings.DJSCALE = djscale
    wait_pool(lambda: len(usable_replicas()) == 2)
    with replay_paused(ready, ("pg-default-replica1",)):
        with psycopg.connect(**_test_db_kwargs("default")) as conn:
            conn.execute("INSERT INTO testapp_note (author, text) VALUES ('lag', 'x')")
        wait_pool(lambda: usable_replicas() == ["default_replica2"])
        health = get_pool("default").health()  # type: ignore[union-attr]
        assert health["default_replica1"].up
        assert (health["default_replica1"].lag_seconds or 0) > 0.5
        assert health["default_replica1"].lag_bytes
        reset_stats(ready)
        with consistency.scope():
            for _ in range(10):
                read_notes("lag")
        seen = calls(ready)
    assert seen == {"pg-default": 0, "pg-default-replica1": 0, "pg-default-replica2": 10}


def test_a_stopped_replica_is_skipped_within_the_refresh_interval(ready: LocalCluster) -> None:
    interval = 0.2
    try:
        ready.stop_service("pg-default-replica2")
        stopped = time.monotonic()
        wait_pool(lambda: usable_replicas() == ["default_replica1"], timeout=5)
        noticed = time.monotonic() - stopped
        # One refresh interval, plus one round of probes (each bounded by its timeout).
        assert noticed < interval + 2.5, noticed
        with consistency.scope():
            assert {read_alias("default") for _ in range(20)} == {"default_replica1"}
    finally:
        ready.start_service("pg-default-replica2")
    wait_pool(lambda: len(usable_replicas()) == 2)


def test_with_no_usable_replica_reads_fall_back_to_the_primary_or_raise(
        ready: LocalCluster, settings: Any) -> None:
    from djscale.errors import NoReplicaAvailable

    djscale = conf.merged()
    djscale["REPLICATION_GROUPS"]["default"]["MAX_LAG_BYTES"] = 0
    djscale["REPLICATION_GROUPS"]["default"]["MAX_LAG_SECONDS"] = 0
    settings.DJSCALE = djscale
    with replay_paused(ready):
        with psycopg.connect(**_test_db_kwargs("default")) as conn:
            conn.execute("INSERT INTO testapp_note (author, text) VALUES ('lag', 'x')")
        wait_pool(lambda: usable_replicas() == [])
        with consistency.scope():
            assert read_alias("default") == "default"
        djscale = conf.merged()
        djscale["REPLICATION_GROUPS"]["default"]["FALLBACK"] = "raise"
        settings.DJSCALE = djscale
        wait_pool(lambda: usable_replicas() == [])
        with consistency.scope(), pytest.raises(NoReplicaAvailable, match="FALLBACK"):
            read_alias("default")


# ---------------------------------------------------------------------- failover


@override_settings(ROOT_URLCONF=__name__)
def test_a_get_whose_replica_died_is_retried_and_the_dead_connection_dropped(
        ready: LocalCluster, settings: Any) -> None:
    djscale = conf.merged()
    # Probes far apart and every read weighted onto replica2: the pool cannot have
    # noticed the crash, so the request really hits the dead replica.
    djscale["REPLICA_REFRESH_SECONDS"] = 60
    djscale["REPLICATION_GROUPS"]["default"]["POLICY"] = "weighted"
    djscale["REPLICATION_GROUPS"]["default"]["WEIGHTS"] = {"default_replica1": 0,
                                                           "default_replica2": 1}
    settings.DJSCALE = djscale
    tag = marker()
    client = Client()
    reset_stats(ready)
    assert client.get(f"/notes/{tag}").status_code == 200
    assert calls(ready)["pg-default-replica2"] == 1
    assert connections["default_replica2"].connection is not None  # persistent

    before = failover.FAILOVERS.labels("default_replica2")._value.get()
    try:
        ready.stop_service("pg-default-replica2", crash=True)
        answer = client.get(f"/notes/{tag}")
        assert answer.status_code == 200, answer.content
        assert failover.FAILOVERS.labels("default_replica2")._value.get() == before + 1
        assert not get_pool("default").health()["default_replica2"].up  # type: ignore[union-attr]
        # The retry ran on the other replica.
        assert calls(ready, services=("pg-default-replica1",)) == {"pg-default-replica1": 1}
        assert connections["default_replica2"].connection is None  # dropped, not kept

        # Code outside HTTP: the same retry through the failover_reads decorator. Make
        # this process believe replica2 is up again (the next probe is a minute away).
        pool = get_pool("default")
        assert pool is not None
        pool.update(ReplicaHealth("default_replica2", up=True, replay_lsn=2**62,
                                  lag_bytes=0, lag_seconds=0.0))

        @failover_reads
        def task_body() -> list[str]:
            with consistency.scope():
                return read_notes(tag)

        assert task_body() == []
        assert failover.FAILOVERS.labels("default_replica2")._value.get() == before + 2
    finally:
        ready.start_service("pg-default-replica2")
    # After the restart the alias works again on a fresh connection.
    assert Note.objects.using("default_replica2").count() >= 0


@override_settings(ROOT_URLCONF=__name__)
def test_a_post_is_never_retried(ready: LocalCluster, settings: Any) -> None:
    from djscale.db.middleware import ReplicaMiddleware

    request = HttpRequest()
    request.method = "POST"
    middleware = ReplicaMiddleware(lambda r: JsonResponse({}))
    middleware.process_view(request, notes_view, (), {"marker": "x"})
    from django.db import OperationalError

    assert middleware.process_exception(request, OperationalError("boom")) is None


@pytest.mark.django_db(databases="__all__")  # TestCase style: each test inside a transaction
def test_in_a_testcase_transaction_reads_see_the_uncommitted_writes(ready: LocalCluster) -> None:
    Note.objects.create(author="testcase", text="uncommitted")
    assert read_notes("testcase") == ["uncommitted"]  # read on the primary, in the transaction
