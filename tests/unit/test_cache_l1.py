"""The in-process L1 store: bounds, LRU, expiry, copies and fill generations."""

from __future__ import annotations

import pickle
import time

from djscale.cache.l1 import LocalStore


def _store(**kw: float) -> LocalStore:
    args = {"max_entries": 3, "max_bytes": 10_000, "timeout": 60.0, **kw}
    return LocalStore(max_entries=int(args["max_entries"]), max_bytes=int(args["max_bytes"]),
                      timeout=float(args["timeout"]))


def test_evicts_least_recently_used_beyond_max_entries() -> None:
    s = _store()
    for k in "abc":
        s.put(k, pickle.dumps(k), ttl=None)
    assert s.get("a") is not None  # a is now most recent
    s.put("d", pickle.dumps("d"), ttl=None)
    assert s.get("b") is None
    assert {k for k in "acd" if s.get(k) is not None} == {"a", "c", "d"}
    assert s.evictions == 1


def test_bounded_by_bytes() -> None:
    s = _store(max_entries=1000, max_bytes=2000)
    for i in range(10):
        s.put(f"k{i}", b"\x80" + b"x" * 400, ttl=None)
    assert s.size_bytes <= 2000
    assert len(s) < 10
    s.put("huge", b"\x80" + b"x" * 5000, ttl=None)  # larger than the whole store
    assert s.get("huge") is None


def test_entries_expire_at_the_l1_timeout_or_the_l2_expiry() -> None:
    s = _store(timeout=0.05)
    s.put("a", 1, ttl=None)
    s.put("b", 2, ttl=60)
    t = _store(timeout=60)
    t.put("c", 3, ttl=0.05)
    time.sleep(0.08)
    assert s.get("a") is None and s.get("b") is None and t.get("c") is None


def test_every_read_deserializes_a_new_copy() -> None:
    s = _store()
    s.put("a", pickle.dumps({"x": [1]}), ttl=None)
    first = pickle.loads(s.get("a").payload)  # type: ignore[union-attr, arg-type]
    first["x"].append(2)
    assert pickle.loads(s.get("a").payload) == {"x": [1]}  # type: ignore[union-attr, arg-type]


def test_a_fill_started_before_an_invalidation_is_refused() -> None:
    s = _store()
    gen = s.generation("a")
    s.discard("a")  # an invalidation arrives while the value is read from Redis
    assert s.fill("a", b"\x80stale", ttl=None, generation=gen) is False
    assert s.get("a") is None
    gen = s.generation("a")
    s.flush()
    assert s.fill("a", b"\x80stale", ttl=None, generation=gen) is False
    gen = s.generation("a")
    assert s.fill("a", b"\x80fresh", ttl=None, generation=gen) is True


def test_disabled_store_keeps_nothing() -> None:
    s = _store(max_entries=0)
    s.put("a", 1, ttl=None)
    assert s.get("a") is None
