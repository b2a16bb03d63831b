"""Which logical shard a shard key belongs to: the documented, stable placement function.

This module owns :func:`logical_shard_for` and nothing else (no database, no settings).
The function must give the same answer in every process, on every machine and in every
Python version for as long as the data lives, so it never uses Python's ``hash()``
(randomized per process for strings).

``hash`` mode (the default)::

    canonical(key)  = str(key).encode("utf-8") for int, str and UUID keys; bytes as they are
    logical_shard   = int.from_bytes(md5(canonical(key)).digest()[:8], "big") % logical_shards

``modulo`` mode (for projects migrating from ``user_id % N`` routing; integer keys only)::

    logical_shard   = key % logical_shards

Placement is decided here, in Python, and written into the logical-shard bits of each
row's id (:mod:`djscale.sharding.ids`): the database never hashes keys, it only decodes
ids, so this function has exactly one implementation.
"""

from __future__ import annotations

import hashlib
import uuid

from djscale.errors import RoutingError

__all__ = ["HASH", "MODULO", "canonical_key", "logical_shard_for"]

HASH = "hash"
MODULO = "modulo"

ShardKey = int | str | bytes | uuid.UUID


def canonical_key(key: object) -> bytes:
    """The bytes a key is hashed from; raise RoutingError for unsupported key types."""
    if isinstance(key, bool):
        raise RoutingError(f"shard key {key!r} is a bool: use an int, str, bytes or UUID key")
    if isinstance(key, int | str | uuid.UUID):
        return str(key).encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise RoutingError(
        f"shard key {key!r} has type {type(key).__name__}: use an int, str, bytes or UUID key"
    )


def logical_shard_for(key: object, *, logical_shards: int, mode: str = HASH) -> int:
    """The logical shard (``0 .. logical_shards - 1``) of ``key``; stable forever."""
    if mode == MODULO:
        if isinstance(key, bool) or not isinstance(key, int):
            raise RoutingError(
                f"shard key {key!r} is not an integer: sharding mode 'modulo' needs integer "
                "keys (use mode 'hash' for strings)"
            )
        return key % logical_shards
    if mode != HASH:
        raise RoutingError(f"unknown sharding mode {mode!r}: expected 'hash' or 'modulo'")
    digest = hashlib.md5(canonical_key(key), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % logical_shards
