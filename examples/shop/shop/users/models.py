"""Users live on the shard of their user id; the directory (main database) maps e-mails."""

from django.db import models

from djscale.sharding.models import ShardedModel


class UserDirectory(models.Model):
    """Global lookup on the main database: its primary key is the user's id."""

    email = models.EmailField(unique=True)


class User(ShardedModel):
    """A shop user, on the shard of ``user_id``."""

    shard_key = "user_id"

    user_id = models.BigIntegerField(unique=True)
    email = models.EmailField()
    name = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)

    def as_json(self) -> dict[str, object]:
        return {"id": self.user_id, "email": self.email, "name": self.name,
                "created": self.created.isoformat(), "shard": self.shard_alias()}
