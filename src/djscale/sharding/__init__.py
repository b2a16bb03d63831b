"""Sharding over several PostgreSQL databases: logical shards, 64-bit ids, moves.

Add ``"djscale.sharding"`` to ``INSTALLED_APPS`` and give the topology ``[[shards]]``;
:func:`djscale.settings.from_topology` then puts
:class:`~djscale.sharding.router.ShardRouter` before the replica router.

What lives where:

- :mod:`~djscale.sharding.keys` - ``logical_shard_for(key)``: the stable placement hash
- :mod:`~djscale.sharding.ids` - the 64-bit id layout, ``shard_of(id)``
- :mod:`~djscale.sharding.shardmap` - logical shard -> database, cached per process
- :mod:`~djscale.sharding.models` - ``ShardedModel``, ``ShardedIDField``, the map table
- :mod:`~djscale.sharding.managers` - ``for_key``, ``get_by_shard_key``, auto-routing
- :mod:`~djscale.sharding.router` - ``ShardRouter`` (reads, writes, migrations)
- :mod:`~djscale.sharding.scatter` - parallel cross-shard queries
- :mod:`~djscale.sharding.lookups` - global lookup tables (email -> user id)
- :mod:`~djscale.sharding.migrate` - migrate every shard, per-shard report
- :mod:`~djscale.sharding.move` - online move of one logical shard

Only the pure helpers are imported here (models need the app registry).
"""

from djscale.sharding.ids import make_id, millis_of, shard_of
from djscale.sharding.keys import logical_shard_for

__all__ = ["logical_shard_for", "make_id", "millis_of", "shard_for", "shard_of"]


def shard_for(key: object) -> int:
    """The logical shard of a shard-key value, with this project's settings."""
    from djscale.sharding.config import get_config

    cfg = get_config()
    return logical_shard_for(key, logical_shards=cfg.logical_shards, mode=cfg.mode)
