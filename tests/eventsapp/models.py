"""A tiny domain for the events tests: accounts whose closing is announced by an event."""

from __future__ import annotations

from django.db import models


class Account(models.Model):
    """``closed_count`` counts how many times a consumer applied the close: it must be 1."""

    name = models.CharField(max_length=100)
    closed = models.BooleanField(default=False)
    closed_count = models.IntegerField(default=0)
