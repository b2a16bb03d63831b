"""The deadline watchdog of djscale.db.deadline: pure logic, no database."""

from __future__ import annotations

import threading

from djscale.db.deadline import Timer, Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_timer_is_due_only_once_its_deadline_passed() -> None:
    clock = FakeClock()
    dog = Watchdog(clock)
    fired: list[str] = []
    dog._thread = threading.current_thread()  # no background thread: drive due() by hand
    dog.arm(0.5, lambda: fired.append("a"))
    assert dog.due() == []
    clock.now += 0.5
    (timer,) = dog.due()
    assert timer.fire() is True
    assert fired == ["a"]
    assert timer.fired


def test_timers_come_due_earliest_first() -> None:
    clock = FakeClock()
    dog = Watchdog(clock)
    dog._thread = threading.current_thread()
    late = dog.arm(2.0, lambda: None)
    early = dog.arm(1.0, lambda: None)
    clock.now += 5
    assert dog.due() == [early, late]


def test_a_cancelled_timer_never_fires_and_leaves_the_heap_when_due() -> None:
    clock = FakeClock()
    dog = Watchdog(clock)
    dog._thread = threading.current_thread()
    fired: list[int] = []
    timer = dog.arm(1.0, lambda: fired.append(1))
    assert timer.cancel() is True
    clock.now += 2
    assert dog.due() == []
    assert dog.pending() == 0
    assert timer.fire() is False
    assert fired == []


def test_cancel_after_firing_says_the_action_ran() -> None:
    timer = Timer(0.0, lambda: None)
    assert timer.fire() is True
    assert timer.cancel() is False
    assert timer.fire() is False  # once only


def test_an_action_that_raises_does_not_break_the_timer() -> None:
    def boom() -> None:
        raise RuntimeError("x")

    timer = Timer(0.0, boom)
    assert timer.fire() is True
    assert timer.fired


def test_the_watchdog_thread_fires_a_due_timer() -> None:
    dog = Watchdog()
    done = threading.Event()
    dog.arm(0.01, done.set)
    assert done.wait(10)


def test_an_earlier_timer_wakes_the_watchdog_thread() -> None:
    dog = Watchdog()
    dog.arm(3600, lambda: None)  # the thread now sleeps until this one
    done = threading.Event()
    dog.arm(0.01, done.set)
    assert done.wait(10)


def test_one_thread_serves_every_timer() -> None:
    dog = Watchdog()
    events = [threading.Event() for _ in range(50)]
    for i, event in enumerate(events):
        dog.arm(0.001 * i, event.set)
    assert all(e.wait(10) for e in events)
    names = [t.name for t in threading.enumerate() if t.name == "djscale-deadlines"]
    assert len(names) >= 1
    assert dog._thread is not None and dog._thread.is_alive()


def test_deadlines_apply_only_inside_a_scope_and_come_from_the_group() -> None:
    from djscale.db import config
    from djscale.db.deadline import deadline_for, query_deadlines

    group = next(g for g in config.groups().values() if g.replicas)
    assert deadline_for(group.primary) is None  # outside requests: migrations, commands
    with query_deadlines():
        assert deadline_for(group.primary) == group.query_deadline_ms / 1000
        assert deadline_for(group.replicas[0]) == group.replica_query_deadline_ms / 1000
        assert deadline_for("not-a-group-member") is None
        with query_deadlines(None):
            assert deadline_for(group.primary) is None
        with query_deadlines(7.5):
            assert deadline_for(group.replicas[0]) == 7.5
    assert deadline_for(group.primary) is None


def test_a_deadline_names_its_replica_for_failover() -> None:
    from djscale.db import config
    from djscale.db.deadline import QueryDeadlineExceeded
    from djscale.db.failover import failed_replicas

    group = next(g for g in config.groups().values() if g.replicas)
    exc = QueryDeadlineExceeded(group.replicas[0], 0.5)
    assert failed_replicas(exc) == [group.replicas[0]]
    assert failed_replicas(QueryDeadlineExceeded(group.primary, 0.5)) == []
    assert "500 ms" in str(exc)
