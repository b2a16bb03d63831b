"""Pure sharding logic: the documented placement hash, the id layout, the merge order."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from djscale.errors import RoutingError
from djscale.sharding.ids import MAX_LOGICAL_SHARDS, make_id, millis_of, shard_of
from djscale.sharding.keys import logical_shard_for
from djscale.sharding.scatter import _Key


def test_hash_mode_is_the_documented_md5_formula() -> None:
    for key in (0, 1, 42, 10**15, "alice@example.com", "ü"):
        digest = hashlib.md5(str(key).encode("utf-8")).digest()
        want = int.from_bytes(digest[:8], "big") % 1024
        assert logical_shard_for(key, logical_shards=1024) == want


def test_placement_is_stable_across_versions() -> None:
    # Frozen values: changing them would move every existing row.
    assert [logical_shard_for(k, logical_shards=1024) for k in (1, 2, 3, "a")] == [
        int.from_bytes(hashlib.md5(b"1").digest()[:8], "big") % 1024,
        int.from_bytes(hashlib.md5(b"2").digest()[:8], "big") % 1024,
        int.from_bytes(hashlib.md5(b"3").digest()[:8], "big") % 1024,
        int.from_bytes(hashlib.md5(b"a").digest()[:8], "big") % 1024,
    ]
    assert logical_shard_for(1, logical_shards=1024) == 898


def test_uuid_keys_hash_like_their_text() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert logical_shard_for(u, logical_shards=64) == logical_shard_for(str(u), logical_shards=64)


def test_modulo_mode_matches_key_mod_n_for_migrating_projects() -> None:
    assert [logical_shard_for(k, logical_shards=3, mode="modulo") for k in range(7)] == [
        0, 1, 2, 0, 1, 2, 0]


def test_modulo_mode_refuses_string_keys() -> None:
    with pytest.raises(RoutingError, match="integer keys"):
        logical_shard_for("abc", logical_shards=8, mode="modulo")


@pytest.mark.parametrize("key", [True, 1.5, None, object()])
def test_unsupported_key_types_are_refused_clearly(key: object) -> None:
    with pytest.raises(RoutingError, match="shard key"):
        logical_shard_for(key, logical_shards=8)


def test_hash_spreads_sequential_keys_evenly() -> None:
    counts = [0] * 16
    for key in range(1, 16001):
        counts[logical_shard_for(key, logical_shards=16)] += 1
    assert max(counts) < 1100 and min(counts) > 900


def test_id_layout_round_trips() -> None:
    id_ = make_id(millis=123456789, logical_shard=1000, sequence=1023)
    assert shard_of(id_) == 1000
    assert millis_of(id_, epoch_ms=10) == 123456799
    assert id_ & 1023 == 1023
    assert id_ < 2**63


def test_id_layout_bits_are_41_13_10() -> None:
    biggest = make_id(millis=2**41 - 1, logical_shard=MAX_LOGICAL_SHARDS - 1, sequence=2**10 - 1)
    assert biggest == -1  # all 64 bits set, as PostgreSQL's signed bigint shows it
    assert shard_of(biggest) == MAX_LOGICAL_SHARDS - 1
    assert millis_of(biggest) == 2**41 - 1
    assert make_id(millis=2**40 - 1, logical_shard=8191, sequence=1023) == 2**63 - 1
    with pytest.raises(ValueError):
        make_id(millis=2**41, logical_shard=0, sequence=0)
    with pytest.raises(ValueError):
        make_id(millis=0, logical_shard=MAX_LOGICAL_SHARDS, sequence=0)


def test_sequence_wraps_within_ten_bits() -> None:
    assert make_id(millis=1, logical_shard=2, sequence=1024) == make_id(
        millis=1, logical_shard=2, sequence=0)


def test_merge_keys_sort_nulls_like_postgres() -> None:
    values = [3, None, 1, 2]
    asc = sorted(values, key=lambda v: _Key(v, False))
    desc = sorted(values, key=lambda v: _Key(v, True))
    assert asc == [1, 2, 3, None]  # ORDER BY x: NULLS LAST
    assert desc == [None, 3, 2, 1]  # ORDER BY x DESC: NULLS FIRST
