"""The relay: moves committed outbox rows to the Celery broker, at least once.

Each :meth:`Relay.relay_once` takes a batch of pending rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` (so several relays, on several machines, share the
work without sending a row twice at the same time), sends each as a Celery task message,
and marks it published **only after the broker accepted it**, in the same transaction
that holds the lock. If the broker is down, the row stays pending (its ``attempts`` and
``last_error`` say why) and the next pass tries again. If the relay dies between the send
and the commit, the row is sent again later: delivery is at-least-once, and consumers
de-duplicate by event id.

Rows are sent in ``created_at`` order within a batch; with several relays, order across
batches is not guaranteed (consumers must not rely on it).

Run it with ``django-admin events_relay`` (one loop per primary database), or call
:meth:`Relay.run` from your own process.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from djscale.errors import ConfigurationError

__all__ = ["DELIVER_TASK", "Relay", "envelope"]

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
    Celery's ``-A``) or else ``settings.DJSCALE["CELERY_APP"]`` (``[celery] app`` of the
    topology) names the project's app. Without either, an app configured from Django's
    ``CELERY_*`` settings: never Celery's unconfigured default app, which would publish to
    ``amqp://localhost`` whatever the project's broker is.
    """
    from celery import Celery
    from django.conf import settings

    spec = spec or getattr(settings, "DJSCALE", {}).get("CELERY_APP") or ""
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


class Relay:
    """Publishes pending outbox rows of database ``using`` through Celery app ``app``."""

    def __init__(self, *, app: Any = None, using: str = "default", batch_size: int = 100,
                 queue: str | None = None, connect_retries: int = 1) -> None:
        if app is None:
            app = celery_app()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.app = app
        self.using = using
        self.batch_size = batch_size
        self.queue = queue
        self.connect_retries = connect_retries

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
        """Relay until ``stop`` is set: batches back to back while there is work."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                sent = self.relay_once()
            except Exception:  # a database outage must not end the relay
                log.exception("event relay (%s): pass failed; retrying", self.using)
                sent = 0
            if sent < self.batch_size:
                stop.wait(interval)
