"""The invalidation bus's message handling and its bounded wait (no Redis needed)."""

from __future__ import annotations

import threading
import time

from djscale.cache.bus import InvalidationBus
from djscale.cache.l1 import LocalStore
from djscale.cache.l2 import Eviction, RedisL2


def _bus() -> tuple[InvalidationBus, LocalStore]:
    bus = InvalidationBus(RedisL2(["redis://127.0.0.1:1/0"], connect_timeout=0.05), "chan")
    store = LocalStore(max_entries=100, max_bytes=1 << 20, timeout=60)
    bus._stores.add(store)  # register() would start the listener
    for key in ("a", "b", "c"):
        store.put(key, b"x", ttl=60)
    return bus, store


def test_a_numbered_eviction_is_applied_and_remembered() -> None:
    bus, store = _bus()
    assert bus._apply(b"other|K1796530620733883|a\0b") is True
    assert bus.applied == 1796530620733883
    assert store.get("a") is None and store.get("b") is None and store.get("c") is not None


def test_an_unnumbered_eviction_from_an_earlier_version_is_applied_too() -> None:
    bus, store = _bus()
    assert bus._apply(b"other|k|c") is False
    assert bus.applied == 0 and store.get("c") is None


def test_our_own_eviction_moves_the_number_but_evicts_nothing() -> None:
    bus, store = _bus()
    assert bus._apply(bus.origin + b"|K7|a") is False  # nothing to acknowledge at once
    assert bus.applied == 7 and store.get("a") is not None


def test_the_messages_a_cache_sends() -> None:
    bus, _ = _bus()
    assert bus.keys_message(["a", "b"]) == Eviction("chan", bus.origin, b"a\0b")
    assert bus.flush_message() == ("chan", bus.origin + b"|f|")


def test_waiting_without_redis_gives_up_at_once() -> None:
    bus, _ = _bus()
    started = time.monotonic()
    assert bus.wait_applied(5, timeout=2.0) is False
    assert time.monotonic() - started < 1.0
    assert bus.wait_applied(timeout=2.0) is True  # this thread published nothing


def test_a_flush_is_applied_and_acknowledged_at_once() -> None:
    # clear() is FLUSHDB, which took the listener's acknowledgement with it.
    bus, store = _bus()
    assert bus._apply(b"other|f|") is True
    assert len(store) == 0 and bus.flushes == {"remote_clear": 1}


def test_an_eviction_that_could_not_be_numbered_is_not_waited_for() -> None:
    bus, _ = _bus()
    bus.l2._sent("chan", 0)  # what a failed or unnumbered publish leaves
    assert bus.wait_applied(timeout=2.0) is False


def test_a_bus_that_is_not_subscribed_leaves_redis_alone_at_exit() -> None:
    # Its Redis may be gone (a test's cluster stopped): the field ages out by itself.
    bus, _ = _bus()
    calls: list[tuple[str, bytes]] = []
    bus.l2.forget_listener = lambda channel, origin: calls.append((channel, origin))  # type: ignore[method-assign]
    bus._thread = threading.Thread(target=lambda: None)  # started once, no longer subscribed
    bus._thread.start()
    bus._leave()
    bus.stop()
    assert calls == []
    bus.connected.set()
    bus._leave()
    assert calls == [("chan", bus.origin)]
