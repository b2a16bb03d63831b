"""Models used by the integration tests."""

from django.db import models


class Note(models.Model):
    """A plain (unsharded) row on the main replication group."""

    author = models.CharField(max_length=40)
    text = models.TextField(default="")
