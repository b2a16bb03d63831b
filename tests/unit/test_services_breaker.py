"""Circuit breaker states: closed -> open on a failure rate, half-open trial, close again."""

from __future__ import annotations

import pytest

from djscale.errors import CircuitOpen
from djscale.services.breaker import BreakerRegistry, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, **kwargs: float) -> CircuitBreaker:
    options = {"failure_rate": 0.5, "minimum_calls": 4, "window": 10.0, "reset_timeout": 5.0}
    options.update(kwargs)
    return CircuitBreaker("users", clock=clock, **options)  # type: ignore[arg-type]


def _call(breaker: CircuitBreaker, ok: bool) -> None:
    breaker.before_call()
    if ok:
        breaker.on_success()
    else:
        breaker.on_failure()


def test_breaker_stays_closed_below_minimum_calls() -> None:
    breaker = _breaker(Clock())
    for _ in range(3):
        _call(breaker, False)
    assert breaker.state == "closed"


def test_breaker_opens_when_failure_rate_over_window_reaches_threshold() -> None:
    breaker = _breaker(Clock())
    for ok in (True, True, False, False):
        _call(breaker, ok)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call()
    assert info.value.service == "users"
    assert 4.9 < info.value.retry_after <= 5.0


def test_breaker_ignores_failures_older_than_the_window() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        _call(breaker, False)
    clock.now += 11
    for ok in (True, True, True, False):
        _call(breaker, ok)
    assert breaker.state == "closed"


def test_open_breaker_lets_one_trial_through_after_reset_timeout_and_closes_on_success() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(4):
        _call(breaker, False)
    clock.now += 5.01
    breaker.before_call()               # the trial
    assert breaker.state == "half-open"
    with pytest.raises(CircuitOpen):    # only one trial at a time
        breaker.before_call()
    breaker.on_success()
    assert breaker.state == "closed"
    _call(breaker, False)               # a fresh window: one failure does not reopen it
    assert breaker.state == "closed"


def test_failed_trial_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(4):
        _call(breaker, False)
    clock.now += 6
    _call(breaker, False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.before_call()


def test_abandoned_trial_frees_the_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(4):
        _call(breaker, False)
    clock.now += 6
    breaker.before_call()
    breaker.on_abandon()
    breaker.before_call()
    assert breaker.state == "half-open"


def test_listeners_see_every_transition() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda b, old, new: seen.append((old, new)))
    for _ in range(4):
        _call(breaker, False)
    clock.now += 6
    _call(breaker, True)
    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_registry_gives_one_breaker_per_service() -> None:
    registry = BreakerRegistry()
    assert registry.get("users") is registry.get("users")
    assert registry.get("users") is not registry.get("orders")


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        CircuitBreaker("x", failure_rate=0)


def test_registry_breakers_export_their_state_as_a_gauge() -> None:
    from prometheus_client import REGISTRY

    registry = BreakerRegistry()
    breaker = registry.get("gauge-svc", minimum_calls=1, failure_rate=1.0)

    def sample() -> float | None:
        return REGISTRY.get_sample_value("djscale_circuit_breaker_state",
                                         {"service": "gauge-svc"})

    assert sample() == 0
    _call(breaker, False)
    assert sample() == 2
