"""djscale.breaker as the cache's Redis uses it: consecutive failures, growing back-off.

(The failure-rate mode the service client uses is in test_services_breaker.py.)
"""

from __future__ import annotations

import pytest

from djscale.breaker import CircuitBreaker
from djscale.errors import CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _redis_like(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("redis", failure_rate=None, consecutive_failures=2,
                          reset_timeout=0.05, max_reset_timeout=0.2, clock=clock)


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    b = _redis_like(Clock())
    assert b.allow()
    assert b.on_failure() is False
    b.on_success()
    assert b.on_failure() is False  # the success broke the run
    assert b.on_failure() is True   # two in a row: this one opened it
    assert b.state == "open" and not b.allow()


def test_a_failed_trial_doubles_the_back_off_up_to_its_maximum() -> None:
    clock = Clock()
    b = _redis_like(clock)
    b.on_failure()
    b.on_failure()
    clock.now += 0.051
    assert b.state == "half-open"   # the back-off is over: the next call is a trial
    assert b.allow()                # the trial
    assert not b.allow()            # only one at a time
    assert b.on_failure() is False  # trial failed: open again for 0.1 s
    clock.now += 0.06
    assert not b.allow()
    clock.now += 0.05
    assert b.allow()
    b.on_failure()                  # 0.2 s now, and never more
    assert b.backoff == 0.2
    clock.now += 0.21
    assert b.allow()
    b.on_failure()
    assert b.backoff == 0.2


def test_a_successful_trial_closes_it_and_resets_the_back_off() -> None:
    clock = Clock()
    b = _redis_like(clock)
    b.on_failure()
    b.on_failure()
    clock.now += 0.051
    assert b.allow()
    b.on_failure()
    clock.now += 0.11
    assert b.allow()
    b.on_success()
    assert b.state == "closed" and b.allow() and b.backoff == 0.05


def test_listeners_see_every_state_change() -> None:
    clock = Clock()
    b = _redis_like(clock)
    seen: list[tuple[str, str]] = []
    b.add_listener(lambda _, old, new: seen.append((old, new)))
    b.on_failure()
    b.on_failure()
    clock.now += 0.06
    b.before_call()
    b.on_success()
    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_refused_calls_say_when_the_next_trial_is() -> None:
    b = _redis_like(Clock())
    b.on_failure()
    b.on_failure()
    with pytest.raises(CircuitOpen) as info:
        b.before_call()
    assert 0 < info.value.retry_after <= 0.05


@pytest.mark.parametrize("options", [
    {"failure_rate": None},                                   # nothing would open it
    {"consecutive_failures": 0},
    {"reset_timeout": 5.0, "max_reset_timeout": 1.0},
    {"failure_rate": 1.5},
])
def test_unusable_options_are_refused_with_one_clear_error(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="CircuitBreaker: need"):
        CircuitBreaker("x", **options)  # type: ignore[arg-type]
