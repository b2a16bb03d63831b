"""The outbox, the inbox and the dead letters (tables ``djscale_outbox``, ...).

These tables must live in the same database as the rows they accompany: an outbox row is
written in the domain change's transaction, an inbox row in the consumer's effect's
transaction. Migrate ``djscale_events`` on every such database (shards included).
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = ["DeadLetter", "InboxEvent", "OutboxEvent"]


class OutboxEvent(models.Model):
    """An event waiting to be published (``published_at`` is null) or already sent."""

    # Declared so that type checkers know it without the app being installed.
    objects: ClassVar[models.Manager[OutboxEvent]] = models.Manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=200)
    key = models.CharField(max_length=200, blank=True, default="")
    payload = models.JSONField()
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    """When the broker last accepted the row's message (set again at each redelivery)."""
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    """When the relay saw the delivery task's result: every consumer handled the event."""
    redeliveries = models.PositiveIntegerField(default=0)
    """How often the relay sent the row again for lack of a confirmation (more than the
    relay's ``REDELIVER_ATTEMPTS``: given up, reported as unconfirmed)."""

    class Meta:
        db_table = "djscale_outbox"
        indexes = [
            models.Index(fields=["created_at"], name="djscale_outbox_pending",
                         condition=Q(published_at__isnull=True)),
            # The relay's redelivery pass reads only published, unconfirmed rows.
            models.Index(fields=["published_at"], name="djscale_outbox_unconfirmed",
                         condition=Q(published_at__isnull=False, confirmed_at__isnull=True)),
        ]

    def __str__(self) -> str:
        state = ("pending" if not self.published_at
                 else "confirmed" if self.confirmed_at else "published")
        return f"{self.topic} {self.id} ({state})"


class InboxEvent(models.Model):
    """An event that a consumer has processed (or dead-lettered): never again."""

    # Declared so that type checkers know it without the app being installed.
    objects: ClassVar[models.Manager[InboxEvent]] = models.Manager()

    event_id = models.UUIDField()
    consumer = models.CharField(max_length=200)
    topic = models.CharField(max_length=200)
    processed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "djscale_inbox"
        constraints = [models.UniqueConstraint(fields=["consumer", "event_id"],
                                               name="djscale_inbox_once")]

    def __str__(self) -> str:
        return f"{self.consumer} <- {self.event_id}"


class DeadLetter(models.Model):
    """An event a consumer gave up on after its last attempt, kept for inspection/replay."""

    # Declared so that type checkers know it without the app being installed.
    objects: ClassVar[models.Manager[DeadLetter]] = models.Manager()

    event_id = models.UUIDField()
    consumer = models.CharField(max_length=200)
    topic = models.CharField(max_length=200)
    envelope = models.JSONField()
    attempts = models.PositiveIntegerField()
    error = models.TextField()
    failed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "djscale_dead_letter"

    def __str__(self) -> str:
        return f"{self.consumer} x {self.event_id} after {self.attempts} attempts"
