"""The relay: moves committed outbox rows to the Celery broker, at least once.

Each :meth:`Relay.relay_once` takes a batch of pending rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` (so several relays, on several machines, share the
work without sending a row twice at the same time), sends each as a Celery task message,
and marks it published **only after the broker accepted it**, in the same transaction
that holds the lock. If the broker is down, the row stays pending (its ``attempts`` and
``last_error`` say why) and the next pass tries again. If the relay dies between the send
and the commit, the row is sent again later: delivery is at-least-once, and consumers
de-duplicate by event id.

The broker itself may lose a message it accepted (kombu's Redis transport pops a message
before recording it as unacknowledged: a broker stop or a worker kill in between loses
it). So delivery is confirmed end to end: the delivery task stores its result (Celery's
result backend; ``from_topology`` points it at the broker's Redis), and
:meth:`Relay.redeliver_once` looks up the results of rows published more than
``REDELIVER_AFTER`` seconds ago (10 s, doubled at each redelivery of a row): a row whose
task succeeded gets ``confirmed_at`` and is never looked at again; any other is sent again
with the same task id (the consumers' inbox skips what was already processed), at most
``REDELIVER_ATTEMPTS`` (5) times, then reported (error log, ``djscale_outbox_unconfirmed``)
instead of being sent for ever. Settings: ``DJSCALE["EVENTS"]`` (:mod:`djscale.conf`).

Rows are sent in ``created_at`` order within a batch; with several relays, order across
batches is not guaranteed (consumers must not rely on it).

Run it with ``django-admin events_relay`` (one loop per primary database), or call
:meth:`Relay.run` from your own process.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from djscale import conf
from djscale.errors import ConfigurationError
from djscale.metrics import record_outbox_redelivered

__all__ = ["DELIVER_TASK", "Redelivery", "Relay",
           "delivery_states", "envelope"]

log = logging.getLogger(__name__)

DELIVER_TASK = "djscale.events.deliver"
"""Name of the Celery task that delivers an event to its consumers."""


def envelope(row: Any, *, source: str) -> dict[str, Any]:
    """The message body of outbox row ``row`` (JSON-serialisable)."""
    return {
        "id": str(row.id),
        "topic": row.topic,
        "key": row.key,
        "payload": row.payload,
        "headers": row.headers,
        "created_at": row.created_at.isoformat(),
        "source": source,
    }


def celery_app(spec: str | None = None) -> Any:
    """The Celery app the relay publishes through.

    ``spec`` (``"module:attribute"``, or ``"module"`` holding ``app`` or ``celery``, as
    Celery's ``-A``) or else ``DJSCALE["CELERY_APP"]`` (``[celery] app`` of the
    topology) names the project's app. Without either, an app configured from Django's
    ``CELERY_*`` settings: never Celery's unconfigured default app, which would publish to
    ``amqp://localhost`` whatever the project's broker is.
    """
    from celery import Celery

    spec = spec or conf.get().deployment.celery_app
    if not spec:
        app = Celery("djscale-relay", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        return app
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"Celery app {spec!r}: cannot import {module_name!r} "
                                 f"({exc})") from None
    for name in ([attribute] if attribute else ["app", "celery"]):
        found = getattr(module, name, None)
        if isinstance(found, Celery):
            return found
    raise ConfigurationError(f"Celery app {spec!r}: {module_name!r} has no Celery app "
                             f"named {attribute or 'app or celery'}")


def delivery_states(app: Any, task_ids: Sequence[str]) -> dict[str, str] | None:
    """The result state (``SUCCESS``, ``RETRY``, ...) of each task that has one.

    One ``MGET`` on a key-value result backend (Redis); ``None`` when the app has no
    result backend (deliveries cannot be confirmed).
    """
    from celery.backends.base import DisabledBackend, KeyValueStoreBackend

    backend = app.backend
    if isinstance(backend, DisabledBackend):
        return None
    if not task_ids:
        return {}
    states: dict[str, str] = {}
    if isinstance(backend, KeyValueStoreBackend):
        values = backend.mget([backend.get_key_for_task(i) for i in task_ids])
        for task_id, value in zip(task_ids, values or [], strict=False):
            if value:
                states[task_id] = str(backend.decode_result(value)["status"])
        return states
    for task_id in task_ids:
        state = str(backend.get_task_meta(task_id)["status"])
        if state != "PENDING":  # Celery's word for "no result known"
            states[task_id] = state
    return states


@dataclass(frozen=True)
class Redelivery:
    """What one redelivery pass did with the published, unconfirmed rows that were due."""

    confirmed: int = 0
    redelivered: int = 0
    given_up: int = 0


class Relay:
    """Publishes pending outbox rows of database ``using`` through Celery app ``app``.

    ``redeliver_after`` (seconds) and ``redeliver_attempts`` default to
    ``DJSCALE["EVENTS"]["REDELIVER_AFTER"]`` (10) and ``["REDELIVER_ATTEMPTS"]`` (5).
    """

    def __init__(self, *, app: Any = None, using: str = "default", batch_size: int = 100,
                 queue: str | None = None, connect_retries: int = 1,
                 redeliver_after: float | None = None,
                 redeliver_attempts: int | None = None) -> None:
        if app is None:
            app = celery_app()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        events = conf.get().events
        after = float(events.redeliver_after if redeliver_after is None else redeliver_after)
        attempts = int(events.redeliver_attempts if redeliver_attempts is None
                       else redeliver_attempts)
        if after <= 0 or attempts < 0:
            raise ConfigurationError(
                f"event redelivery: REDELIVER_AFTER must be > 0 s (got {after}) and "
                f"REDELIVER_ATTEMPTS >= 0 (got {attempts})")
        self.app = app
        self.using = using
        self.batch_size = batch_size
        self.queue = queue
        self.connect_retries = connect_retries
        self.redeliver_after = after
        self.redeliver_attempts = attempts
        self._no_backend_logged = False

    def relay_once(self) -> int:
        """Send one batch; return how many rows the broker accepted."""
        from djscale.events.models import OutboxEvent

        with transaction.atomic(using=self.using):
            rows = list(
                OutboxEvent.objects.using(self.using)
                .select_for_update(skip_locked=True)
                .filter(published_at__isnull=True)
                .order_by("created_at", "id")[: self.batch_size])
            if not rows:
                return 0
            sent = self._send(rows)
            if sent:
                OutboxEvent.objects.using(self.using).filter(
                    id__in=[r.id for r in rows[:sent]]).update(published_at=timezone.now())
            if sent < len(rows):
                failed = rows[sent]
                OutboxEvent.objects.using(self.using).filter(id=failed.id).update(
                    attempts=failed.attempts + 1, last_error=failed.last_error)
        return sent

    def backlog(self) -> int:
        """How many rows of this database wait to be published."""
        from djscale.events.models import OutboxEvent

        return OutboxEvent.objects.using(self.using).filter(published_at__isnull=True).count()

    def unconfirmed(self) -> int:
        """How many rows of this database the relay gave up redelivering, unconfirmed."""
        from djscale.events.models import OutboxEvent

        return OutboxEvent.objects.using(self.using).filter(
            published_at__isnull=False, confirmed_at__isnull=True,
            redeliveries__gt=self.redeliver_attempts).count()

    def redeliver_once(self) -> Redelivery:
        """Confirm or send again one batch of published rows whose confirmation is due.

        A row is due ``REDELIVER_AFTER * 2**redeliveries`` seconds after it was last
        published. Rows whose delivery task succeeded get ``confirmed_at``; the others are
        sent again (same task id) while they have redeliveries left, else given up:
        logged, counted in ``djscale_outbox_unconfirmed``, never looked at again.
        """
        from djscale.events.models import OutboxEvent

        now = timezone.now()
        due = Q()
        for k in range(self.redeliver_attempts + 1):
            due |= Q(redeliveries=k,
                     published_at__lt=now - dt.timedelta(seconds=self.redeliver_after * 2 ** k))
        objects = OutboxEvent.objects.using(self.using)
        with transaction.atomic(using=self.using):
            rows = list(objects.select_for_update(skip_locked=True)
                        .filter(due, published_at__isnull=False, confirmed_at__isnull=True)
                        .order_by("published_at")[: self.batch_size])
            if not rows:
                return Redelivery()
            states = delivery_states(self.app, [str(r.id) for r in rows])
            if states is None:
                if not self._no_backend_logged:
                    self._no_backend_logged = True
                    log.warning("event relay (%s): the Celery app has no result backend, so "
                                "deliveries cannot be confirmed and an event the broker "
                                "loses is not sent again (set CELERY_RESULT_BACKEND)",
                                self.using)
                return Redelivery()
            done = [r for r in rows if states.get(str(r.id)) == "SUCCESS"]
            if done:
                objects.filter(id__in=[r.id for r in done]).update(confirmed_at=now)
            late = [r for r in rows if states.get(str(r.id)) != "SUCCESS"]
            give_up = [r for r in late if r.redeliveries >= self.redeliver_attempts]
            again = [r for r in late if r.redeliveries < self.redeliver_attempts]
            sent = self._send(again) if again else 0
            if sent:
                objects.filter(id__in=[r.id for r in again[:sent]]).update(
                    published_at=timezone.now(), redeliveries=F("redeliveries") + 1)
                record_outbox_redelivered(rows=sent)
                log.warning("event relay (%s): %d event(s) without a confirmed delivery "
                            "sent again: %s", self.using, sent,
                            ", ".join(f"{r.id} ({r.topic}, state "
                                      f"{states.get(str(r.id), 'none')})"
                                      for r in again[:sent]))
            for row in give_up:
                state = states.get(str(row.id), "no result")
                objects.filter(id=row.id).update(
                    redeliveries=F("redeliveries") + 1,
                    last_error=f"delivery unconfirmed after {row.redeliveries} redeliveries "
                               f"(task state: {state})")
                log.error("event relay (%s): event %s (%s) still unconfirmed after %d "
                          "redeliveries (task state: %s); given up: check its consumers "
                          "and dead letters, then set its redeliveries to 0 to retry",
                          self.using, row.id, row.topic, row.redeliveries, state)
        return Redelivery(confirmed=len(done), redelivered=sent, given_up=len(give_up))

    def _send(self, rows: Sequence[Any]) -> int:
        """Send rows in order until the first failure; return how many were accepted."""
        sent = 0
        try:
            with self.app.connection_for_write() as conn:
                # Fail fast when the broker is down: the rows wait in the outbox.
                conn.ensure_connection(max_retries=self.connect_retries, interval_start=0,
                                       interval_step=0.2, timeout=2)
                for row in rows:
                    self.publish(conn, row)
                    sent += 1
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves the row pending
            if sent == len(rows):
                return sent  # all accepted; only closing the connection failed
            row = rows[sent]
            row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("event relay (%s): broker did not accept event %s (%s); %d sent, "
                        "the rest waits for the next pass", self.using, row.id,
                        row.last_error, sent)
        return sent

    def publish(self, connection: Any, row: Any) -> None:
        """Send one row as a Celery task message; return once the broker accepted it."""
        options: dict[str, Any] = {}
        if self.queue:
            options["queue"] = self.queue
        self.app.send_task(DELIVER_TASK, args=[envelope(row, source=self.using)],
                           task_id=str(row.id), connection=connection, retry=False,
                           **options)

    def run(self, *, interval: float = 0.5, stop: threading.Event | None = None) -> None:
        """Relay until ``stop`` is set: batches back to back while there is work, and a
        redelivery pass (:meth:`redeliver_once`) every few seconds."""
        stop = stop or threading.Event()
        # Redelivery passes: a few per REDELIVER_AFTER, never more than one per second.
        every = min(max(1.0, interval), self.redeliver_after / 4)
        next_check = time.monotonic() + every
        while not stop.is_set():
            try:
                sent = self.relay_once()
            except Exception:  # a database outage must not end the relay
                log.exception("event relay (%s): pass failed; retrying", self.using)
                sent = 0
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + every
                try:
                    while self.redeliver_once() != Redelivery() and not stop.is_set():
                        pass
                except Exception as exc:  # noqa: BLE001 - broker or database away: next time
                    log.warning("event relay (%s): redelivery pass failed (%s: %s); "
                                "retrying", self.using, type(exc).__name__, exc)
            if sent < self.batch_size:
                stop.wait(interval)
