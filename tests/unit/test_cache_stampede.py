"""Single-flight and XFetch (pure logic, no Redis); the breaker is in test_breaker.py."""

from __future__ import annotations

import threading
import time

import pytest

from djscale.cache.stampede import SingleFlight, should_recompute_early


def test_single_flight_runs_once_for_concurrent_callers() -> None:
    flight = SingleFlight()
    calls = []
    results = []
    barrier = threading.Barrier(20)

    def work() -> int:
        calls.append(1)
        time.sleep(0.1)
        return 42

    def caller() -> None:
        barrier.wait()
        results.append(flight.do("k", work))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r[1] for r in results).count(True) == 1
    assert {r[0] for r in results} == {42}
    assert not flight.in_flight("k")


def test_single_flight_propagates_the_error_and_forgets_it() -> None:
    flight = SingleFlight()

    def boom() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        flight.do("k", boom)
    assert flight.do("k", lambda: 1) == (1, True)


def test_xfetch_probability_rises_near_expiry() -> None:
    assert not should_recompute_early(remaining=None, delta=1.0, beta=1.0)
    assert not should_recompute_early(remaining=10.0, delta=0.0, beta=1.0)
    assert not should_recompute_early(remaining=10.0, delta=1.0, beta=0.0)
    # -delta * beta * ln(r) >= remaining
    assert should_recompute_early(remaining=0.5, delta=1.0, beta=1.0, rand=lambda: 0.5)
    assert not should_recompute_early(remaining=0.8, delta=1.0, beta=1.0, rand=lambda: 0.5)
    assert should_recompute_early(remaining=0.8, delta=1.0, beta=2.0, rand=lambda: 0.5)
