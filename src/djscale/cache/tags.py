"""Tags on cache entries: which ``@cached`` results show a given object.

``@cached(timeout=300, tags=lambda product_id: [f"shop.product:{product_id}"])`` records,
each time the function computes, that its entry carries those tags. :func:`invalidate_tags`
then deletes every entry carrying any of the given tags, through the cache's own
``delete_many``: for a :class:`~djscale.cache.backend.TieredCache` that is Redis (L2) and,
through the invalidation bus, the L1 of every process. :mod:`djscale.edge.invalidation`
calls it when a tagged model is saved, before purging the edge, so the edge refetches
fresh data.

The index of a tag is a Redis set (``SADD``, atomic, never loses a concurrent member)
when the cache is a TieredCache, else a list kept in the cache itself (read-modify-write:
a concurrent compute may be forgotten, bounded by the entry's timeout). Each index
expires after the longest timeout of the entries it names, so it never outlives them
for long.

A compute that races an invalidation (read the old row, stored after the eviction) would
survive until its timeout. Each invalidation therefore first stamps its tags with the time
(:func:`invalidated_at`), then evicts; ``@cached`` reads the stamps before computing and
again after storing, and deletes what it stored when they moved: either the eviction came
after the store (and removed it) or the stamp is seen (and the entry is deleted).
The edge uses the same stamps (:func:`djscale.edge.tags.add_tags`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from django.core.cache import BaseCache

__all__ = ["index_entry", "invalidate_tags", "invalidated_at", "tag_key", "tag_token"]

log = logging.getLogger("djscale.cache")

_PREFIX = "djscale:tag:"
_STAMP = "djscale:tagt:"
_DEFAULT_INDEX_TTL = 24 * 3600


_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: one header token as it is
_MAX_TAG = 256


def tag_token(text: str) -> str:
    """``text`` as one header token: what a tag string or a primary key becomes.

    Visible ASCII stays as it is; anything else (spaces, control or non-ASCII characters)
    is percent-encoded in UTF-8, so a tag built from request data (a slug, a search term)
    can never break a header or smuggle a second tag; a token longer than 256 characters
    keeps its first 200 and a hash of the whole. Tokens are tokens of themselves, so the
    cache entries, the response header and the invalidation always name the same tag
    (texts that differ only as ``%20`` vs a space share one: a purge of one purges both,
    never too little).
    """
    if not text:
        raise ValueError("an edge tag cannot be empty")
    if _TOKEN_RE.fullmatch(text) is None:
        text = "".join(char if _TOKEN_RE.fullmatch(char) else quote(char, safe="")
                       for char in text)
    if len(text) > _MAX_TAG:
        text = f"{text[:200]}~{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    return text


def tag_key(tag: str) -> str:
    """The key of ``tag``'s index."""
    return _PREFIX + tag_token(tag)


def _member(key: str, version: int | None) -> str:
    return json.dumps([key, version])


def _l2_client(cache: BaseCache) -> Any:
    l2 = getattr(cache, "l2", None)
    return getattr(l2, "client", None) if l2 is not None else None


def _ttl(timeout: float | None) -> int:
    return int(timeout) + 1 if isinstance(timeout, int | float) and timeout > 0 \
        else _DEFAULT_INDEX_TTL


def index_entry(cache: BaseCache, tags: Iterable[str], key: str, version: int | None,
                timeout: float | None) -> None:
    """Record that entry ``key`` (``version``) of ``cache`` carries ``tags``.

    Never raises: an index that cannot be written costs freshness (until the entry's
    timeout), not the request.
    """
    member = _member(key, version)
    ttl = _ttl(timeout)
    client = _l2_client(cache)
    try:
        for tag in tags:
            if client is not None:
                index = cache.make_key(tag_key(tag))
                pipe = client.pipeline(transaction=False)
                pipe.sadd(index, member)
                pipe.expire(index, ttl, gt=True)
                pipe.expire(index, ttl, nx=True)
                pipe.execute()
            else:
                names = set(cache.get(tag_key(tag)) or ())
                names.add(member)
                cache.set(tag_key(tag), sorted(names), timeout=ttl)
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("could not index cache entry %s under its tags: %s", key, exc)


def invalidated_at(cache: BaseCache, tags: Iterable[str]) -> list[float]:
    """When each of ``tags`` was last invalidated (epoch seconds; 0.0: never or unknown).

    Read from Redis itself for a TieredCache (an L1 copy could be older than the
    invalidation it must reveal). Never raises: without the stamps, the caller cannot
    detect a race and behaves as before.
    """
    tags = [tag_token(t) for t in tags]
    if not tags:
        return []
    client = _l2_client(cache)
    try:
        if client is not None:
            mget = getattr(client, "mget_nonatomic", client.mget)  # Redis Cluster: any slots
            raw = mget([cache.make_key(_STAMP + t) for t in tags])
            return [float(v) if v else 0.0 for v in raw]
        found = cache.get_many([_STAMP + t for t in tags])
    except Exception:  # noqa: BLE001 - see docstring
        return [0.0] * len(tags)
    return [float(found.get(_STAMP + t, 0.0)) for t in tags]


def _stamp(cache: BaseCache, tags: list[str], stamp: float) -> None:
    client = _l2_client(cache)
    if client is None:
        cache.set_many({_STAMP + t: stamp for t in tags}, timeout=_DEFAULT_INDEX_TTL)
        return
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.set(cache.make_key(_STAMP + tag), repr(stamp), ex=_DEFAULT_INDEX_TTL)
    pipe.execute()


def invalidate_tags(cache: BaseCache, tags: Iterable[str], *, now: float | None = None) -> int:
    """Delete every entry of ``cache`` that carries one of ``tags``; return how many.

    The tags are stamped with ``now`` (default: the current time) before anything is
    deleted. With a TieredCache it returns once every other live process has evicted
    the entries from its L1 too (``wait_for_l1``, bounded by ``L1_SYNC_TIMEOUT``).
    Raises what the cache raises (the caller retries).
    """
    client = _l2_client(cache)
    members: set[str] = set()
    tags = [tag_token(t) for t in tags]
    stamp = time.time() if now is None else now
    _stamp(cache, tags, stamp)
    for tag in tags:
        if client is not None:
            index = cache.make_key(tag_key(tag))
            found = client.smembers(index)
            if found:
                client.srem(index, *found)
            members.update(m.decode() if isinstance(m, bytes) else m for m in found)
        else:
            members.update(cache.get(tag_key(tag)) or ())
            cache.delete(tag_key(tag))
    by_version: dict[int | None, list[str]] = {}
    for member in members:
        key, version = json.loads(member)
        by_version.setdefault(version, []).append(key)
    for version, keys in by_version.items():
        cache.delete_many(keys, version=version)
    wait = getattr(cache, "wait_for_l1", None)
    if members and wait is not None:
        # Answer once no process serves them from its L1 any more (bounded).
        wait()
    return len(members)
