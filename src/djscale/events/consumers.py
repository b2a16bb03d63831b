"""Consumers: handlers of events that run exactly once in effect per event.

Register a handler in a ``consumers.py`` module of any installed app (discovered when
Django starts)::

    from djscale.events.consumers import Event, consumer

    @consumer("user_deleted", using=lambda event: shard_for(event.payload["user_id"]))
    def archive_orders(event: Event) -> None:
        Order.objects.using(event.db).filter(user_id=event.payload["user_id"]).update(...)

Each (consumer, event) is processed in **one transaction** on the consumer's database:
an inbox row keyed by (consumer name, event id) is inserted first, then the handler runs.
A second delivery of the same event finds the row (or waits for the first delivery's
transaction and then finds it) and is skipped; a handler that raises rolls back its
effect and its inbox row together, so the retry starts clean. After ``max_attempts``
failed deliveries the event is dead-lettered for that consumer (a
:class:`~djscale.events.models.DeadLetter` row plus an inbox row, in one transaction).

Handlers run with the publishing request's id as the current request id (logs, service
calls). Settings (``DJSCALE["EVENTS"]``, read through :mod:`djscale.conf`): ``MAX_ATTEMPTS``
(5), ``RETRY_BACKOFF`` (1.0 s, doubled per attempt, full jitter) and ``RETRY_BACKOFF_MAX`` (60 s).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from djscale import conf

__all__ = ["Consumer", "Event", "backoff", "consumer", "consumers_of", "deliver",
           "replay_dead_letter"]

log = logging.getLogger(__name__)

Handler = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    """An event as a consumer sees it; ``db`` is the alias its effect must be written to."""

    id: uuid.UUID
    topic: str
    payload: Mapping[str, Any]
    key: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    attempt: int = 1
    db: str = "default"

    @classmethod
    def from_envelope(cls, data: Mapping[str, Any], *, attempt: int = 1) -> Event:
        """Rebuild an event from the relay's message body."""
        created = data.get("created_at")
        return cls(id=uuid.UUID(str(data["id"])), topic=str(data["topic"]),
                   payload=data.get("payload") or {}, key=str(data.get("key", "")),
                   headers=data.get("headers") or {},
                   created_at=dt.datetime.fromisoformat(created) if created else None,
                   attempt=attempt)


@dataclass(frozen=True)
class Consumer:
    """A registered handler of one topic."""

    name: str
    topic: str
    handler: Handler
    using: str | Callable[[Event], str] = "default"
    max_attempts: int | None = None

    def db_for(self, event: Event) -> str:
        """The database alias this consumer writes ``event``'s effect to."""
        return self.using(event) if callable(self.using) else self.using


_registry: dict[str, dict[str, Consumer]] = {}


def consumer(topic: str, *, name: str | None = None,
             using: str | Callable[[Event], str] = "default",
             max_attempts: int | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated function as a consumer of ``topic``.

    ``name`` (default: the function's dotted path) keys the inbox: renaming a consumer
    makes it see old events as new. ``using`` is the database of its effect (an alias,
    or a function of the event, e.g. the shard of a user).
    """
    def register(handler: Handler) -> Handler:
        cname = name or f"{handler.__module__}.{handler.__qualname__}"
        existing = _registry.setdefault(topic, {}).get(cname)
        # The same function registered again (a module imported twice) replaces itself.
        if existing is not None and _path(existing.handler) != _path(handler):
            raise ValueError(f"two consumers of {topic!r} are named {cname!r}; give one "
                             "of them name=...")
        _registry[topic][cname] = Consumer(cname, topic, handler, using, max_attempts)
        return handler

    return register


def _path(handler: Handler) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


def consumers_of(topic: str) -> list[Consumer]:
    """The consumers registered for ``topic``."""
    return list(_registry.get(topic, {}).values())


def backoff(attempt: int, *, base: float | None = None, cap: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds before delivery attempt ``attempt + 1``: full-jitter exponential backoff."""
    events = conf.get().events
    base = events.retry_backoff if base is None else base
    cap = events.retry_backoff_max if cap is None else cap
    high = min(float(cap), float(base) * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(high / 2, high)


def _process(cons: Consumer, event: Event) -> bool:
    """Run one consumer on one event; return False if it had already processed it."""
    from djscale.events.models import InboxEvent

    db = cons.db_for(event)
    with transaction.atomic(using=db):
        try:
            with transaction.atomic(using=db):
                InboxEvent.objects.using(db).create(event_id=event.id, consumer=cons.name,
                                                    topic=event.topic)
        except IntegrityError:
            return False
        cons.handler(Event(**{**event.__dict__, "db": db}))
    return True


def _dead_letter(cons: Consumer, event: Event, envelope: Mapping[str, Any],
                 error: str) -> None:
    from djscale.events.models import DeadLetter, InboxEvent

    db = cons.db_for(event)
    with transaction.atomic(using=db):
        try:
            with transaction.atomic(using=db):
                InboxEvent.objects.using(db).create(event_id=event.id, consumer=cons.name,
                                                    topic=event.topic)
        except IntegrityError:
            return  # another delivery finished it meanwhile
        DeadLetter.objects.using(db).create(event_id=event.id, consumer=cons.name,
                                            topic=event.topic, envelope=dict(envelope),
                                            attempts=event.attempt, error=error[:10000])
    log.error("event %s (%s): consumer %s gave up after %d attempts; dead-lettered: %s",
              event.id, event.topic, cons.name, event.attempt, error)


def deliver(envelope: Mapping[str, Any], *, attempt: int = 1) -> dict[str, str]:
    """Hand an event to each of its consumers once; return {consumer: error} to retry.

    Consumers whose last attempt failed are dead-lettered instead of returned.
    """
    event = Event.from_envelope(envelope, attempt=attempt)
    with _request_id(event):
        return _deliver(event, envelope, attempt)


def _request_id(event: Event) -> contextlib.AbstractContextManager[Any]:
    """Log and call on with the id of the request that published the event."""
    value = event.headers.get("request_id")
    if not isinstance(value, str):
        return contextlib.nullcontext()
    try:
        from djscale.http.request_id import use_request_id
    except ImportError:
        from djscale.services.context import propagate

        return propagate(request_id=value)
    return use_request_id(value)


def _deliver(event: Event, envelope: Mapping[str, Any], attempt: int) -> dict[str, str]:
    default_max = conf.get().events.max_attempts
    retry: dict[str, str] = {}
    for cons in consumers_of(event.topic):
        try:
            done = _process(cons, event)
        except Exception as exc:  # noqa: BLE001 - the handler's failure is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            if attempt >= (cons.max_attempts or default_max):
                _dead_letter(cons, event, envelope, error)
            else:
                log.warning("event %s (%s): consumer %s failed (attempt %d): %s",
                            event.id, event.topic, cons.name, attempt, error)
                retry[cons.name] = error
            continue
        if done:
            log.info("event %s (%s) processed by %s", event.id, event.topic, cons.name)
        else:
            log.info("event %s (%s) already processed by %s: duplicate skipped",
                     event.id, event.topic, cons.name)
    return retry


def replay_dead_letter(letter_id: int, *, using: str = "default") -> uuid.UUID:
    """Give a dead-lettered event another round of attempts for its consumer.

    In one transaction on ``using`` (the consumer's database): forget the consumer's inbox
    row and the dead letter, and put the event back in that database's outbox (pending),
    so the relay sends it again. Other consumers of the event skip it (their inbox).
    After the commit, the earlier delivery's task result is forgotten, so that the relay
    confirms the replay by its own result. Return the event id.
    """
    from djscale.events.models import DeadLetter, InboxEvent, OutboxEvent

    with transaction.atomic(using=using):
        letter = DeadLetter.objects.using(using).select_for_update().get(pk=letter_id)
        InboxEvent.objects.using(using).filter(consumer=letter.consumer,
                                               event_id=letter.event_id).delete()
        env = letter.envelope
        if not OutboxEvent.objects.using(using).filter(id=letter.event_id).update(
                published_at=None, confirmed_at=None, redeliveries=0):
            OutboxEvent.objects.using(using).create(
                id=letter.event_id, topic=letter.topic, key=env.get("key", ""),
                payload=env.get("payload") or {}, headers=env.get("headers") or {})
        letter.delete()
        transaction.on_commit(lambda: _forget_result(str(letter.event_id)), using=using)
    event_id: uuid.UUID = letter.event_id
    return event_id


def _forget_result(task_id: str) -> None:
    """Drop the stored result of the event's earlier delivery (same task id), so that the
    relay confirms the replay only when the replay itself has been delivered."""
    try:
        from celery.backends.base import DisabledBackend

        from djscale.events.relay import celery_app

        backend = celery_app().backend
        if not isinstance(backend, DisabledBackend):
            backend.forget(task_id)
    except Exception as exc:  # noqa: BLE001 - the replay stands; only its confirmation is early
        log.warning("event %s: cannot forget the earlier delivery's result (%s: %s); the "
                    "replay may be confirmed before it is delivered", task_id,
                    type(exc).__name__, exc)
