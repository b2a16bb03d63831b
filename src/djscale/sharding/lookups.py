"""Global lookups: find sharded rows by something other than their shard key.

A sharded row can only be found from its shard key or id. To find a user by email, keep
a *global* lookup table on the main database (``email -> user_id``) and write it in
step with the sharded row::

    users = GlobalLookup(UserDirectory, ShardedUser, source="pk", target="user_id")
    user = users.create({"email": email}, email=email, name=name)
    users.get(email=email)       # -> the ShardedUser, or None
    users.delete(user)

Consistency without a distributed transaction: the lookup row is written inside a
transaction on the main database that stays open while the sharded row is written; if
the sharded write fails, the lookup row is rolled back, and if the main database's
commit fails afterwards, the sharded row is deleted again. Deleting works the same way
round. A lookup row whose sharded row has vanished (a crash between the two commits) is
treated as absent by :meth:`GlobalLookup.get` and removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from django.db import models, router, transaction

__all__ = ["GlobalLookup"]

L = TypeVar("L", bound=models.Model)
S = TypeVar("S", bound=models.Model)


class GlobalLookup(Generic[L, S]):
    """A global table ``lookup`` whose field ``source`` holds ``sharded.<target>``."""

    def __init__(self, lookup: type[L], sharded: type[S], *, source: str, target: str) -> None:
        self.lookup = lookup
        self.sharded = sharded
        self.source = source
        self.target = target

    def _alias(self) -> str:
        return router.db_for_write(self.lookup) or "default"

    def create(self, lookup_fields: Mapping[str, Any], **fields: Any) -> S:
        """Create the lookup row, then the sharded row whose ``target`` is its ``source``."""
        alias = self._alias()
        obj: S | None = None
        try:
            with transaction.atomic(using=alias):
                entry = self.lookup._default_manager.using(alias).create(**lookup_fields)
                fields[self.target] = getattr(entry, self.source)
                obj = self.sharded._default_manager.create(**fields)
        except BaseException:
            if obj is not None and obj.pk is not None:  # main DB commit failed: undo
                obj.delete()
            raise
        return obj

    def get(self, **lookup_filters: Any) -> S | None:
        """The sharded row the lookup row matching ``lookup_filters`` points to, or None."""
        alias = self._alias()
        entry = self.lookup._default_manager.using(alias).filter(**lookup_filters).first()
        if entry is None:
            return None
        key = getattr(entry, self.source)
        found = self.sharded._default_manager.filter(**{self.target: key}).first()
        if found is None:
            entry.delete()  # left over from a crash between the two commits
        return found

    def delete(self, obj: S) -> None:
        """Delete ``obj`` and its lookup rows (both or, on failure, neither)."""
        alias = self._alias()
        with transaction.atomic(using=alias):
            self.lookup._default_manager.using(alias).filter(
                **{self.source: getattr(obj, self.target)}).delete()
            obj.delete()
