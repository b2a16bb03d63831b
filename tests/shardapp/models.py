"""Models of the sharding tests: users and orders sharded by ``user_id``, global tables.

``ShardedUser`` and ``Order`` share the shard key ``user_id``, so a user's orders live on
the user's shard. ``UserDirectory`` is the global lookup (email -> user_id, on the main
database); ``UnshardedOrder`` holds the same rows as ``Order`` on one database, to
compare cross-shard queries against.
"""

from django.db import models

from djscale.sharding.models import ShardedModel


class ShardedUser(ShardedModel):
    """A user, sharded by its ``user_id`` (issued by the global ``UserDirectory``)."""

    shard_key = "user_id"

    user_id = models.BigIntegerField(unique=True)
    email = models.CharField(max_length=120)
    name = models.CharField(max_length=80, default="")


class Order(ShardedModel):
    """An order of a user: on the user's shard."""

    shard_key = "user_id"

    user = models.ForeignKey(ShardedUser, on_delete=models.CASCADE, to_field="user_id",
                             db_column="user_id", related_name="orders")
    amount = models.IntegerField()
    note = models.CharField(max_length=40, default="")


class UserDirectory(models.Model):
    """Global lookup: one row per user on the main database; its id is the user_id."""

    email = models.CharField(max_length=120, unique=True)


class UnshardedOrder(models.Model):
    """The same rows as ``Order``, on one database (the reference for scatter-gather)."""

    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField()
    amount = models.IntegerField()
    note = models.CharField(max_length=40, default="")
