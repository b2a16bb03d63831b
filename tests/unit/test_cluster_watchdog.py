"""The watchdog's restart policy: exponential back-off, then a crash loop."""

from __future__ import annotations

from djscale.cluster.watchdog import RestartPolicy


def test_back_off_doubles_with_each_restart_that_did_not_hold_up_to_the_maximum() -> None:
    policy = RestartPolicy(backoff=0.5, max_backoff=4.0, limit=10)
    assert [policy.delay([0.0] * n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_the_death_after_limit_failed_restarts_is_a_crash_loop() -> None:
    policy = RestartPolicy(limit=5)
    assert policy.delay([1.0, 2.0, 3.0, 4.0]) is not None
    assert policy.delay([1.0, 2.0, 3.0, 4.0, 5.0]) is None


def test_a_restart_that_stayed_up_for_the_window_starts_the_count_afresh() -> None:
    policy = RestartPolicy(window=60.0)
    restarts = [100.0, 110.0, 130.0]
    assert policy.recent(restarts, started_at=130.0, now=189.0) == restarts
    assert policy.recent(restarts, started_at=130.0, now=190.0) == []


def test_slow_crashes_still_end_in_a_crash_loop() -> None:
    # Each restart boots for 20 s and exits: the restarts span more than the window,
    # yet none held, so the watchdog gives up after the limit.
    policy = RestartPolicy(limit=5, window=60.0)
    recent: list[float] = []
    now, started = 0.0, -1000.0
    for _ in range(5):
        recent = policy.recent(recent, started, now)
        delay = policy.delay(recent)
        assert delay is not None
        started = now + delay
        recent.append(started)
        now = started + 20.0  # dies 20 s after its restart
    assert policy.delay(policy.recent(recent, started, now)) is None
