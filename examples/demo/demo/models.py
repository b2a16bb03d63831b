"""The demo's tables: visits (plain writes) and notes (writes that publish an event)."""

from django.db import models


class Visit(models.Model):
    """A request that wrote to the primary."""

    app_server = models.CharField(max_length=40)
    created = models.DateTimeField(auto_now_add=True)


class Note(models.Model):
    """A note; creating one publishes a ``note_created`` event in the same transaction."""

    text = models.CharField(max_length=200, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)


class NoteIndexed(models.Model):
    """The effect of consuming a ``note_created`` event: one row per event consumed.

    Deliberately no unique constraint on ``event_id``: exactly-once in effect is the
    inbox's job (djscale.events), and a duplicate here would show that it failed.
    """

    event_id = models.UUIDField(db_index=True)
    note_id = models.BigIntegerField()
    worker = models.CharField(max_length=80)
    indexed = models.DateTimeField(auto_now_add=True)
