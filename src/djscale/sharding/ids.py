"""64-bit ids that carry their logical shard: layout, decoding, and the SQL that makes them.

Layout (most significant bit first, 64 bits as in Instagram's scheme)::

    | 0 | 41 bits: ms since the custom epoch | 13 bits: logical shard | 10 bits: sequence |

Ids are generated *inside PostgreSQL* by ``djscale_next_id(logical_shard, epoch_ms)``
(created on every shard by this app's migration), so a bulk insert costs no extra round
trip. The 10-bit sequence is ``nextval('djscale_id_seq') % 1024`` of the physical
database; the function sleeps 1 ms each time the sequence wraps, so one session never
hands out two equal ids. Ids stay positive ``bigint`` values for 2**40 ms (34.8 years)
after the epoch; after that they turn negative in PostgreSQL's signed ``bigint`` and
everything here still decodes them (for 69.7 years in all). Ids are unique as long as
one physical database issues fewer than 1024 ids per millisecond across all sessions,
and roughly time-ordered.

This module owns the bit layout (pure functions) and the SQL text; it opens no connection.
"""

from __future__ import annotations

__all__ = [
    "ID_FUNCTION_SQL",
    "LOGICAL_BITS",
    "MAX_LOGICAL_SHARDS",
    "SEQUENCE_BITS",
    "TIME_BITS",
    "make_id",
    "millis_of",
    "shard_of",
]

TIME_BITS = 41
LOGICAL_BITS = 13
SEQUENCE_BITS = 10
MAX_LOGICAL_SHARDS = 1 << LOGICAL_BITS
_LOGICAL_MASK = MAX_LOGICAL_SHARDS - 1
_SEQ_MASK = (1 << SEQUENCE_BITS) - 1


def make_id(*, millis: int, logical_shard: int, sequence: int) -> int:
    """Compose an id (what the SQL function computes); for tests and tools."""
    if not 0 <= millis < (1 << TIME_BITS):
        raise ValueError(f"millis {millis} does not fit in {TIME_BITS} bits")
    if not 0 <= logical_shard < MAX_LOGICAL_SHARDS:
        raise ValueError(f"logical shard {logical_shard} is not in 0..{MAX_LOGICAL_SHARDS - 1}")
    value = (millis << (LOGICAL_BITS + SEQUENCE_BITS)) | (logical_shard << SEQUENCE_BITS) | (
        sequence & _SEQ_MASK)
    return value - (1 << 64) if value >= (1 << 63) else value  # PostgreSQL's signed bigint


def shard_of(id_: int) -> int:
    """The logical shard an id was generated for."""
    return (int(id_) >> SEQUENCE_BITS) & _LOGICAL_MASK


def millis_of(id_: int, *, epoch_ms: int = 0) -> int:
    """Milliseconds since the Unix epoch at which an id was generated (given the epoch)."""
    return ((int(id_) & 0xFFFF_FFFF_FFFF_FFFF) >> (LOGICAL_BITS + SEQUENCE_BITS)) + epoch_ms


ID_FUNCTION_SQL = """
CREATE SEQUENCE IF NOT EXISTS djscale_id_seq;
CREATE OR REPLACE FUNCTION djscale_next_id(logical_shard integer, epoch_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    seq bigint;
    now_ms bigint;
BEGIN
    IF logical_shard < 0 OR logical_shard > 8191 THEN
        RAISE EXCEPTION 'djscale_next_id: logical shard % is not in 0..8191', logical_shard;
    END IF;
    seq := nextval('djscale_id_seq') % 1024;
    IF seq = 0 THEN
        -- The 10-bit sequence wrapped: make sure this session's next 1024 ids fall in a
        -- later millisecond than the previous 1024 did.
        PERFORM pg_sleep(0.001);
    END IF;
    now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    RETURN ((now_ms - epoch_ms) << 23) | (logical_shard::bigint << 10) | seq;
END
$$;
"""
