"""Events through the outbox, a real Celery worker and a real Redis broker.

The worker is a separate process (``celery -A tests.eventsapp.celery worker``) on the
pytest-django test databases; the broker is a Redis of its own, so that a test can stop
it without disturbing the shared cluster.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections, transaction
from django.utils import timezone

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import ManagedProcess, wait_until
from djscale.errors import EventError
from djscale.events.consumers import deliver
from djscale.events.models import DeadLetter, InboxEvent, OutboxEvent
from djscale.events.outbox import publish
from djscale.events.relay import Redelivery, Relay, envelope
from djscale.testing import ClusterFactory
from tests.eventsapp.models import Account

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker(djscale_cluster_factory: ClusterFactory) -> LocalCluster:
    return djscale_cluster_factory({"project": {"name": "evbroker"}}, parts=("redis",),
                                   name="events-broker")


@pytest.fixture(scope="module")
def broker_url(broker: LocalCluster) -> str:
    host, port = broker.address("redis")
    return f"redis://{host}:{port}/0"


@pytest.fixture(scope="module")
def celery_app(broker_url: str) -> Any:
    from tests.eventsapp.celery import app

    app.conf.broker_url = broker_url
    return app


_running: list[ManagedProcess] = []   # the module's worker, once a test started it


@pytest.fixture(autouse=True)
def _no_delivery_outlives_its_test(transactional_db: None, broker_url: str) -> Iterator[None]:
    """After each test, let the worker finish every delivery the test sent, then purge.

    The worker is module-wide, so a test that relays events without asking for it still
    has them consumed if an earlier test started it. A consumer's transaction that runs
    into the test database flush (a TRUNCATE of every table, in this fixture's teardown's
    wake) deadlocks with it; one still queued would write into a later test. Depending on
    ``transactional_db`` makes this teardown run before the flush.
    """
    yield
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2)
    try:
        if any(proc.alive() for proc in _running):
            # acks_late: a message leaves "unacked" only once its task has returned. A
            # message the worker just popped is in neither for an instant: idle twice.
            seen = [False]

            def idle() -> bool:
                now = not client.llen("celery") and not client.hlen("unacked")
                twice, seen[0] = now and seen[0], now
                return twice

            assert wait_until(idle, 30, interval=0.1), \
                "the events worker was still busy 30 s after the test ended"
        client.delete("celery", "unacked", "unacked_index")
    except redis.ConnectionError:
        pass   # the test left its broker stopped: nothing can be delivered either
    finally:
        client.close()


@pytest.fixture(scope="module")
def worker(django_db_setup: None, broker_url: str, broker: LocalCluster,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    log = tmp_path_factory.mktemp("events") / "worker.log"
    proc = ManagedProcess(
        name="events-worker", kind="celery", log=str(log), cwd=str(ROOT),
        cmd=[sys.executable, "-m", "celery", "-A", "tests.eventsapp.celery:app", "worker",
             "--concurrency", "2", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--hostname", "events@%h"],
        env={"DJANGO_SETTINGS_MODULE": "tests.eventsapp.worker_settings",
             "EVENTS_TEST_BROKER_URL": broker_url, "PYTHONPATH": str(ROOT)})
    proc.start()
    try:
        proc.wait_ready(lambda: " ready." in log.read_text(errors="replace"), 60)
        _running.append(proc)
        yield proc
    finally:
        _running.clear()
        proc.stop()


def _log(proc: ManagedProcess) -> str:
    return Path(proc.log).read_text(errors="replace")


def _account(name: str, using: str = "default") -> Account:
    return Account.objects.using(using).create(name=name)


def _closed_count(pk: int, using: str = "default") -> int:
    return Account.objects.using(using).get(pk=pk).closed_count


def _close_account(name: str, topic: str = "account_closed", using: str = "default",
                   **extra: Any) -> tuple[Account, uuid.UUID]:
    with transaction.atomic(using=using):
        account = _account(name, using)
        event_id = publish(topic, {"account_id": account.pk, **extra}, using=using)
    return account, event_id


# ------------------------------------------------------------------ outbox, no broker


def test_outbox_row_commits_with_the_domain_write() -> None:
    account, event_id = _close_account("ada")
    row = OutboxEvent.objects.using("default").get(id=event_id)
    assert (row.topic, row.payload, row.published_at) == (
        "account_closed", {"account_id": account.pk}, None)


def test_a_rolled_back_transaction_publishes_no_event(celery_app: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        _account("bob")
        publish("account_closed", {"account_id": 1})
        raise RuntimeError("the domain change failed")
    assert not OutboxEvent.objects.using("default").exists()
    assert not Account.objects.using("default").filter(name="bob").exists()
    assert Relay(app=celery_app).relay_once() == 0


def test_publish_outside_a_transaction_is_refused() -> None:
    with pytest.raises(EventError, match=r"must run inside transaction.atomic\(using='default'\)"):
        publish("account_closed", {"account_id": 1})


def test_a_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(EventError, match="not JSON-serialisable"), transaction.atomic():
        publish("account_closed", {"account": object()})


def test_a_consumer_delivered_the_same_event_twice_applies_it_once() -> None:
    account, event_id = _close_account("cy")
    body = envelope(OutboxEvent.objects.using("default").get(id=event_id), source="default")
    assert deliver(body) == {}
    assert deliver(body) == {}
    assert _closed_count(account.pk) == 1
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_concurrent_deliveries_of_one_event_apply_it_once() -> None:
    account, event_id = _close_account("dee")
    body = envelope(OutboxEvent.objects.using("default").get(id=event_id), source="default")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            deliver(body)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _closed_count(account.pk) == 1


def test_two_relays_never_take_the_same_rows(celery_app: Any) -> None:
    ids = {_close_account(f"r{i}")[1] for i in range(12)}
    first_holds_lock = threading.Event()
    release_first = threading.Event()
    sent: dict[str, list[uuid.UUID]] = {"a": [], "b": []}

    class Recording(Relay):
        def __init__(self, name: str, pause: bool) -> None:
            super().__init__(app=celery_app, batch_size=6)
            self.name, self.pause = name, pause

        def publish(self, connection: Any, row: Any) -> None:
            if self.pause and not first_holds_lock.is_set():
                first_holds_lock.set()
                release_first.wait(10)
            super().publish(connection, row)
            sent[self.name].append(row.id)

    def run_first() -> None:
        try:
            Recording("a", pause=True).relay_once()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_first)
    thread.start()
    assert first_holds_lock.wait(10)
    # While the first relay holds its 6 rows locked, the second takes the 6 others.
    assert Recording("b", pause=False).relay_once() == 6
    release_first.set()
    thread.join(10)
    assert not set(sent["a"]) & set(sent["b"])
    assert set(sent["a"]) | set(sent["b"]) == ids
    assert not OutboxEvent.objects.using("default").filter(published_at__isnull=True).exists()


# ------------------------------------------------------------------ through the worker


def test_committed_event_is_relayed_and_consumed_by_the_worker(
        celery_app: Any, worker: ManagedProcess) -> None:
    account, event_id = _close_account("eve")
    assert Relay(app=celery_app).relay_once() == 1
    assert OutboxEvent.objects.using("default").get(id=event_id).published_at is not None
    assert wait_until(lambda: _closed_count(account.pk) == 1, 30), _log(worker)[-3000:]
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_event_waits_in_the_outbox_while_the_broker_is_down(
        celery_app: Any, worker: ManagedProcess, broker: LocalCluster) -> None:
    relay = Relay(app=celery_app)
    broker.stop_service("redis")
    try:
        account, event_id = _close_account("fay")    # commits while the broker is down
        assert relay.relay_once() == 0
        row = OutboxEvent.objects.using("default").get(id=event_id)
        assert row.published_at is None
        assert row.attempts == 1
        assert "OperationalError" in row.last_error
    finally:
        broker.start_service("redis")
    assert wait_until(lambda: relay.relay_once() == 1, 20, interval=0.5)
    assert wait_until(lambda: _closed_count(account.pk) == 1, 60), _log(worker)[-3000:]


def test_redelivered_event_is_processed_once_by_the_worker(
        celery_app: Any, worker: ManagedProcess) -> None:
    relay = Relay(app=celery_app)
    account, event_id = _close_account("gus")
    assert relay.relay_once() == 1
    assert wait_until(lambda: _closed_count(account.pk) == 1, 30), _log(worker)[-3000:]
    # Deliver it twice more: the relay sending again (as after a crash before its
    # commit) and the broker handing the message out again.
    OutboxEvent.objects.using("default").filter(id=event_id).update(published_at=None)
    assert relay.relay_once() == 1
    with celery_app.connection_for_write() as conn:
        relay.publish(conn, OutboxEvent.objects.using("default").get(id=event_id))
    needle = f"event {event_id} (account_closed) already processed by eventsapp.close_account"
    assert wait_until(lambda: _log(worker).count(needle) == 2, 30), _log(worker)[-3000:]
    assert _closed_count(account.pk) == 1
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_failing_consumer_is_retried_with_backoff_until_it_succeeds(
        celery_app: Any, worker: ManagedProcess) -> None:
    account, event_id = _close_account("hal", topic="account_flaky", fail_times=2)
    assert Relay(app=celery_app).relay_once() == 1
    assert wait_until(lambda: _closed_count(account.pk) == 1, 30), _log(worker)[-3000:]
    log = _log(worker)
    assert f"event {event_id} (account_flaky): consumer eventsapp.flaky failed (attempt 2)" \
        in log
    assert not DeadLetter.objects.using("default").exists()


def test_poison_event_is_dead_lettered_after_max_attempts(
        celery_app: Any, worker: ManagedProcess) -> None:
    account, event_id = _close_account("ivy", topic="account_poison")
    assert Relay(app=celery_app).relay_once() == 1

    def dead() -> bool:
        return DeadLetter.objects.using("default").filter(event_id=event_id).exists()

    assert wait_until(dead, 30), _log(worker)[-3000:]
    letter = DeadLetter.objects.using("default").get(event_id=event_id)
    assert (letter.consumer, letter.attempts) == ("eventsapp.poison", 3)
    assert "ValueError: this event cannot be processed" in letter.error
    assert letter.envelope["payload"] == {"account_id": account.pk}
    assert _closed_count(account.pk) == 0         # each failed attempt was rolled back
    assert InboxEvent.objects.using("default").filter(event_id=event_id).exists()


def test_events_on_a_shard_are_relayed_and_consumed_on_that_shard(
        celery_app: Any, worker: ManagedProcess) -> None:
    account, event_id = _close_account("jo", topic="account_closed_on_shard",
                                       using="shard2", shard="shard2")
    assert not OutboxEvent.objects.using("default").filter(id=event_id).exists()
    assert Relay(app=celery_app, using="shard2").relay_once() == 1
    assert wait_until(lambda: _closed_count(account.pk, "shard2") == 1, 30), \
        _log(worker)[-3000:]
    assert InboxEvent.objects.using("shard2").filter(event_id=event_id).count() == 1


def test_worker_killed_mid_way_leaves_the_event_to_be_processed_once_after_restart(
        celery_app: Any, worker: ManagedProcess, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    account, event_id = _close_account("kit", topic="account_slow", hold_file=str(hold))
    assert Relay(app=celery_app).relay_once() == 1
    needle = f"slow consumer holding event {event_id}"
    assert wait_until(lambda: needle in _log(worker), 30), _log(worker)[-3000:]
    worker.kill()                                 # SIGKILL in the middle of the transaction
    hold.unlink()
    assert _closed_count(account.pk) == 0         # its effect died with its transaction
    start = Path(worker.log).stat().st_size
    worker.start()
    worker.wait_ready(lambda: " ready." in _log(worker)[start:], 60)
    # The broker hands the unacknowledged message out again after its visibility timeout.
    assert wait_until(lambda: _closed_count(account.pk) == 1, 60, interval=0.5), \
        _log(worker)[-3000:]
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_events_relay_command_publishes_every_database_once(celery_app: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    _close_account("lea")
    _close_account("max", topic="account_closed_on_shard", using="shard1", shard="shard1")
    out = StringIO()
    call_command("events_relay", "--once", stdout=out)
    lines = out.getvalue().splitlines()
    assert "default: 1 event(s) published" in lines
    assert "shard1: 1 event(s) published" in lines
    assert "shard2: 0 event(s) published" in lines
    assert len(lines) == 4      # default + 3 shards, each once


def test_consumer_runs_with_the_request_id_of_the_publishing_request() -> None:
    from djscale.http.request_id import use_request_id

    with use_request_id("req-777"):
        account, event_id = _close_account("nan", topic="account_traced")
    row = OutboxEvent.objects.using("default").get(id=event_id)
    assert row.headers == {"request_id": "req-777"}
    assert deliver(envelope(row, source="default")) == {}
    assert Account.objects.using("default").get(pk=account.pk).name == "req-777"


def test_a_dead_letter_can_be_replayed_through_the_outbox() -> None:
    from djscale.events.consumers import replay_dead_letter

    account, event_id = _close_account("ola", topic="account_poison")
    body = envelope(OutboxEvent.objects.using("default").get(id=event_id), source="default")
    OutboxEvent.objects.using("default").filter(id=event_id).update(published_at=timezone.now())
    assert deliver(body, attempt=3) == {}          # last attempt: dead-lettered
    letter = DeadLetter.objects.using("default").get(event_id=event_id)
    assert replay_dead_letter(letter.pk) == event_id
    assert not DeadLetter.objects.using("default").exists()
    assert not InboxEvent.objects.using("default").filter(event_id=event_id).exists()
    assert OutboxEvent.objects.using("default").get(id=event_id).published_at is None
    assert deliver(body, attempt=1) == {"eventsapp.poison": "ValueError: this event cannot "
                                                            "be processed"}
    assert _closed_count(account.pk) == 0


# ------------------------------------------------------------------ confirmation, redelivery


def _row(event_id: uuid.UUID, using: str = "default") -> OutboxEvent:
    return OutboxEvent.objects.using(using).get(id=event_id)


def _drop_queue(broker_url: str, queue: str) -> int:
    """Delete a queue's messages from the Redis broker by hand: the broker 'lost' them."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.delete(queue))
    finally:
        client.close()


def test_the_delivery_task_stores_its_result_in_the_brokers_redis(celery_app: Any) -> None:
    from django.conf import settings

    # from_topology: the broker's Redis of the topology (the worker of these tests sees
    # the same backend; only the broker is a Redis of its own).
    # Set by from_topology() at run time; the type checker's settings have no broker.
    assert settings.CELERY_RESULT_BACKEND.startswith("redis://")  # type: ignore[misc]
    assert settings.CELERY_TASK_IGNORE_RESULT is True  # type: ignore[misc]
    assert celery_app.tasks["djscale.events.deliver"].ignore_result is False


def test_a_confirmed_delivery_gets_confirmed_at_and_is_never_sent_again(
        celery_app: Any, worker: ManagedProcess) -> None:
    account, event_id = _close_account("pia")
    relay = Relay(app=celery_app, redeliver_after=0.2)
    assert relay.relay_once() == 1
    assert wait_until(lambda: _closed_count(account.pk) == 1, 30), _log(worker)[-3000:]
    assert wait_until(lambda: relay.redeliver_once().confirmed == 1, 20, interval=0.3)
    row = _row(event_id)
    assert row.confirmed_at is not None and row.redeliveries == 0
    time.sleep(0.5)
    assert relay.redeliver_once() == Redelivery()      # a confirmed row is never read again
    assert _row(event_id).redeliveries == 0
    assert _log(worker).count(f"event {event_id} (account_closed) processed") == 1


def test_an_event_the_broker_lost_is_redelivered_and_consumed_once(
        celery_app: Any, broker_url: str, worker: ManagedProcess) -> None:
    account, event_id = _close_account("quin")
    # The broker accepts the message, then loses it (deleted from its queue by hand).
    assert Relay(app=celery_app, queue="djscale-lost").relay_once() == 1
    assert _drop_queue(broker_url, "djscale-lost") == 1
    assert _row(event_id).published_at is not None
    relay = Relay(app=celery_app, redeliver_after=0.2)
    assert wait_until(lambda: relay.redeliver_once().redelivered == 1, 10, interval=0.1)
    assert wait_until(lambda: _closed_count(account.pk) == 1, 30), _log(worker)[-3000:]
    assert wait_until(lambda: relay.redeliver_once().confirmed == 1, 20, interval=0.3)
    row = _row(event_id)
    assert (row.redeliveries, row.confirmed_at is not None) == (1, True)
    assert _closed_count(account.pk) == 1
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_a_slow_consumer_is_redelivered_to_but_not_applied_twice(
        celery_app: Any, worker: ManagedProcess, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    account, event_id = _close_account("rae", topic="account_slow", hold_file=str(hold))
    relay = Relay(app=celery_app, redeliver_after=0.2)
    assert relay.relay_once() == 1
    assert wait_until(lambda: f"slow consumer holding event {event_id}" in _log(worker), 30)
    # Still busy after REDELIVER_AFTER: no result yet, so the relay sends it again; the
    # second delivery waits on the first one's uncommitted inbox row.
    assert wait_until(lambda: relay.redeliver_once().redelivered == 1, 10, interval=0.1)
    time.sleep(1.0)
    hold.unlink()
    needle = f"event {event_id} (account_slow) already processed by eventsapp.slow"
    assert wait_until(lambda: needle in _log(worker), 30), _log(worker)[-3000:]
    assert wait_until(lambda: relay.redeliver_once().confirmed == 1, 20, interval=0.3)
    assert _closed_count(account.pk) == 1
    assert InboxEvent.objects.using("default").filter(event_id=event_id).count() == 1


def test_an_event_never_confirmed_is_given_up_after_its_redeliveries_and_reported(
        celery_app: Any, broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _, event_id = _close_account("sid")
    # Published to a queue that no worker reads: never confirmed.
    relay = Relay(app=celery_app, queue="djscale-unread", redeliver_after=0.1,
                  redeliver_attempts=2)
    try:
        assert relay.relay_once() == 1
        passes: list[Redelivery] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(p.given_up for p in passes):
            passes.append(relay.redeliver_once())
            time.sleep(0.05)
        assert sum(p.redelivered for p in passes) == 2
        assert sum(p.given_up for p in passes) == 1
        row = _row(event_id)
        assert row.confirmed_at is None and row.redeliveries == 3
        assert "delivery unconfirmed after 2 redeliveries" in row.last_error
        assert relay.unconfirmed() == 1
        assert f"event {event_id} (account_closed) still unconfirmed" in caplog.text
        time.sleep(1.0)
        assert relay.redeliver_once() == Redelivery()   # reported, not retried for ever
    finally:
        _drop_queue(broker_url, "djscale-unread")


def test_without_a_result_backend_the_relay_says_deliveries_cannot_be_confirmed(
        broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from celery import Celery

    app = Celery("no-results", broker=broker_url, set_as_current=False)
    app.conf.result_backend = None
    relay = Relay(app=app, queue="djscale-unread", redeliver_after=0.1)
    try:
        _close_account("tom")
        assert relay.relay_once() == 1
        time.sleep(0.3)
        assert relay.redeliver_once() == Redelivery()
        assert "has no result backend" in caplog.text
    finally:
        _drop_queue(broker_url, "djscale-unread")


def test_a_bad_redelivery_setting_is_a_clear_error(celery_app: Any) -> None:
    from django.core.management import CommandError, call_command

    from djscale.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="REDELIVER_AFTER must be > 0"):
        Relay(app=celery_app, redeliver_after=0)
    with pytest.raises(CommandError, match="REDELIVER_AFTER must be > 0"):
        call_command("events_relay", "--once", "--redeliver-after", "-1")


def test_a_replayed_dead_letter_is_confirmed_by_its_own_delivery_not_the_first_one(
        celery_app: Any) -> None:
    from djscale.events.consumers import replay_dead_letter

    _, event_id = _close_account("uma", topic="account_poison")
    body = envelope(_row(event_id), source="default")
    assert deliver(body, attempt=3) == {}          # dead-lettered ...
    celery_app.backend.store_result(str(event_id), None, "SUCCESS")   # ... and confirmed
    replay_dead_letter(DeadLetter.objects.using("default").get(event_id=event_id).pk)
    assert celery_app.backend.get_task_meta(str(event_id), cache=False)["status"] == "PENDING"
