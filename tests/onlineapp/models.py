"""Release N of the app: items sharded by ``user_id``; ``total`` is not used yet."""

from django.db import models

from djscale.sharding.models import ShardedModel


class Item(ShardedModel):
    """An item of a user, on the user's shard."""

    shard_key = "user_id"

    user_id = models.BigIntegerField()
    amount = models.IntegerField()
    note = models.CharField(max_length=40, default="")

    def as_json(self) -> dict[str, object]:
        return {"id": self.pk, "user_id": self.user_id, "amount": self.amount,
                "note": self.note}
