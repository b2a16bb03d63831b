"""Read-your-writes tokens and the use_primary()/use_replica() overrides."""

from __future__ import annotations

import asyncio

import pytest

from djscale.db import consistency
from djscale.db.consistency import decode_tokens, encode_tokens, forced, use_primary, use_replica
from djscale.db.probe import format_lsn, parse_lsn


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("0/0") == 0
    with pytest.raises(ValueError):
        parse_lsn("16B374D848")


def test_tokens_round_trip_through_their_signed_form() -> None:
    tokens = {"default": parse_lsn("0/3000060"), "shard1": 5}
    assert decode_tokens(encode_tokens(tokens), max_age=60) == tokens


@pytest.mark.parametrize("value", [None, "", "garbage", "a:b:c", "e30:1:2"])
def test_missing_or_garbage_tokens_are_ignored(value: str | None) -> None:
    assert decode_tokens(value, max_age=60) == {}


def test_tampered_or_expired_tokens_are_ignored() -> None:
    value = encode_tokens({"default": 10})
    assert decode_tokens(value[:-3] + "abc", max_age=60) == {}
    assert decode_tokens(value, max_age=-1) == {}


def test_merge_keeps_the_highest_position_per_group() -> None:
    state = consistency.ConsistencyState(tokens={"default": 10})
    state.merge({"default": 5, "shard1": 7})
    assert state.tokens == {"default": 10, "shard1": 7}
    assert state.changed


def test_scopes_nest_and_restore() -> None:
    outer = consistency.current()
    with consistency.scope({"default": 1}) as state:
        assert consistency.current() is state and state.sticky
    assert consistency.current() is outer


def test_use_primary_and_use_replica_nest_as_context_managers() -> None:
    assert forced() is None
    with use_primary():
        assert forced() == "primary"
        with use_replica():
            assert forced() == "replica"
        assert forced() == "primary"
    assert forced() is None


def test_use_primary_decorates_sync_and_async_functions() -> None:
    @use_primary
    def sync() -> str | None:
        return forced()

    @use_replica
    async def coro() -> str | None:
        return forced()

    async def block() -> str | None:
        async with use_primary():
            return forced()

    assert sync() == "primary"
    assert asyncio.run(coro()) == "replica"
    assert asyncio.run(block()) == "primary"
    assert forced() is None


def test_no_wal_position_is_asked_of_a_primary_whose_connection_just_failed() -> None:
    from django.db import connections

    conn = connections["default"]
    saved = conn.connection, conn.errors_occurred
    conn.connection, conn.errors_occurred = None, True
    try:
        state = consistency.ConsistencyState(dirty={"default"}, sticky=True)
        consistency.finish(state)  # would raise or block if it tried to connect
        assert state.tokens == {} and state.dirty == {"default"}
    finally:
        conn.connection, conn.errors_occurred = saved
