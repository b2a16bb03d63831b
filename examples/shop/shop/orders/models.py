"""Orders live on the shard of their user's id."""

from django.db import models

from djscale.sharding.models import ShardedModel


class Order(ShardedModel):
    """An order; ``status`` becomes ``archived`` when its user is deleted."""

    shard_key = "user_id"

    user_id = models.BigIntegerField(db_index=True)
    product_id = models.BigIntegerField()
    quantity = models.PositiveIntegerField()
    total_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=20, default="placed")
    created = models.DateTimeField(auto_now_add=True)

    def as_json(self) -> dict[str, object]:
        return {"id": self.pk, "user_id": self.user_id, "product_id": self.product_id,
                "quantity": self.quantity, "total_cents": self.total_cents,
                "status": self.status, "created": self.created.isoformat(),
                "shard": self.shard_alias()}
