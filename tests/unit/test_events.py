"""Events: pure logic (envelopes, backoff, consumer registry); no database, no broker."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from types import SimpleNamespace

import pytest

from djscale.events.consumers import Event, backoff, consumer, consumers_of
from djscale.events.relay import envelope


def test_envelope_round_trips_into_an_event() -> None:
    row = SimpleNamespace(id=uuid.uuid4(), topic="user_deleted", key="u1",
                          payload={"user_id": 1}, headers={"request_id": "r1"},
                          created_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    body = envelope(row, source="shard1")
    assert body["source"] == "shard1"
    event = Event.from_envelope(body, attempt=3)
    assert (event.id, event.topic, event.key, event.attempt) == (row.id, "user_deleted", "u1", 3)
    assert event.payload == {"user_id": 1}
    assert event.headers == {"request_id": "r1"}
    assert event.created_at == row.created_at


def test_backoff_doubles_per_attempt_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, high in ((1, 1.0), (2, 2.0), (3, 4.0), (8, 10.0)):
        delays = [backoff(attempt, base=1.0, cap=10.0, rng=rng) for _ in range(30)]
        assert all(high / 2 <= d <= high for d in delays)
        assert len(set(delays)) > 1


def test_consumers_are_registered_per_topic_with_their_database() -> None:
    topic = f"t-{uuid.uuid4().hex}"

    @consumer(topic, name="a", using=lambda e: "shard" + str(e.payload["s"]))
    def first(event: Event) -> None:
        pass

    @consumer(topic, name="b", max_attempts=2)
    def second(event: Event) -> None:
        pass

    found = {c.name: c for c in consumers_of(topic)}
    assert set(found) == {"a", "b"}
    event = Event(id=uuid.uuid4(), topic=topic, payload={"s": 2})
    assert found["a"].db_for(event) == "shard2"
    assert found["b"].db_for(event) == "default"
    assert found["b"].max_attempts == 2
    assert consumers_of("nobody-listens") == []


def test_two_different_consumers_with_one_name_are_refused() -> None:
    topic = f"t-{uuid.uuid4().hex}"

    @consumer(topic, name="same")
    def first(event: Event) -> None:
        pass

    with pytest.raises(ValueError, match="give one of them name="):
        @consumer(topic, name="same")
        def second(event: Event) -> None:
            raise AssertionError
