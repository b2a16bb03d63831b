"""The deadline watchdog of djscale.db.deadline: pure logic, no database."""

from __future__ import annotations

import os
import threading
import time

import pytest

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


class _PgConn:
    def __init__(self, fd: int) -> None:
        self.socket = fd


class _Raw:
    def __init__(self, fd: int) -> None:
        self.pgconn = _PgConn(fd)


class _FakeWrapper:
    """A Django connection wrapper whose libpq socket is ``fd`` (-1: none)."""

    def __init__(self, alias: str, fd: int) -> None:
        self.alias = alias
        self.connection = _Raw(fd)


def _primary() -> str:
    from djscale.db import config

    return next(g for g in config.groups().values() if g.replicas).primary


def test_a_statement_past_its_deadline_is_abandoned_by_shutting_its_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from djscale.db import deadline

    silent: list[str] = []
    monkeypatch.setattr(deadline, "_mark_silent", silent.append)
    ours, server = socket.socketpair()
    conn = _FakeWrapper(_primary(), ours.fileno())

    def frozen_server(sql: str, params: object, many: bool, context: object) -> object:
        if not ours.recv(1):  # blocks until the watchdog shuts the socket down
            raise OSError("server closed the connection unexpectedly")
        return None

    try:
        with deadline.query_deadlines(0.05), pytest.raises(deadline.QueryDeadlineExceeded,
                                                            match="did not answer within 50 ms"):
            deadline.bound_query(frozen_server, "SELECT 1", None, False, {"connection": conn})
    finally:
        ours.close()
        server.close()
    assert silent == [conn.alias]


def test_a_statement_within_its_deadline_runs_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    from djscale.db import deadline

    silent: list[str] = []
    monkeypatch.setattr(deadline, "_mark_silent", silent.append)
    conn = _FakeWrapper(_primary(), -1)
    with deadline.query_deadlines(60):
        result = deadline.bound_query(lambda *a: 42, "SELECT 1", None, False,
                                      {"connection": conn})
    assert result == 42
    assert silent == []


def test_a_silent_server_fails_at_once_without_being_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from djscale.db import deadline

    alias = _primary()
    monkeypatch.setitem(deadline._silent, alias, threading.current_thread())
    monkeypatch.setattr(deadline, "_silent_pid", os.getpid())

    def never(*args: object) -> object:
        raise AssertionError("a silent server must not be asked")

    with deadline.query_deadlines(), pytest.raises(deadline.QueryDeadlineExceeded,
                                                   match="has not answered since"):
        deadline.bound_query(never, "SELECT 1", None, False,
                             {"connection": _FakeWrapper(alias, -1)})


def test_answered_statements_do_not_pile_up_in_the_heap() -> None:
    dog = Watchdog(FakeClock())
    dog._thread = threading.current_thread()
    for _ in range(1000):
        dog.arm(0.5, lambda: None).cancel()
    assert dog.pending() == 1  # only the last one, dropped on the next arm


class _Opened:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class _Wrapper:
    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.settings_dict: dict[str, object] = {"OPTIONS": {}}


def test_a_connect_past_the_deadline_frees_the_worker_and_closes_what_it_opens_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from djscale.db import deadline

    taken_out: list[str] = []
    monkeypatch.setattr(deadline, "_take_out", lambda alias, seconds: taken_out.append(alias))
    server_answers = threading.Event()
    opened = _Opened()

    def connect(params: object) -> _Opened:
        server_answers.wait(30)  # a frozen server: TCP accepted, no answer
        return opened

    wrapper = _Wrapper(_primary())
    bounded = deadline._bounded_connect(wrapper, connect)
    with deadline.query_deadlines(0.05), pytest.raises(deadline.QueryDeadlineExceeded):
        bounded({})
    assert taken_out == [wrapper.alias]
    server_answers.set()  # the thaw: the late connection is closed, never handed out
    assert opened.closed.wait(10)


def test_a_connect_within_the_deadline_returns_the_connection() -> None:
    from djscale.db import deadline

    opened = _Opened()
    bounded = deadline._bounded_connect(_Wrapper(_primary()), lambda params: opened)
    with deadline.query_deadlines(30):
        assert bounded({}) is opened
    assert not opened.closed.is_set()


def test_a_multi_host_connect_may_skip_each_other_host_for_one_connect_timeout() -> None:
    from djscale.db.deadline import connect_allowance

    assert connect_allowance({"HOST": "db", "OPTIONS": {"connect_timeout": 2}}) == 0.0
    assert connect_allowance({"HOST": "a,b,c", "OPTIONS": {"connect_timeout": 2}}) == 4.0
    assert connect_allowance({"HOST": "a,b", "OPTIONS": {"connect_timeout": 5}}) == 5.0
    # libpq treats anything below 2 s as 2 s.
    assert connect_allowance({"HOST": "a,b", "OPTIONS": {"connect_timeout": 1}}) == 2.0
    assert connect_allowance({"HOST": "a,b"}) == 2.0


def test_a_multi_host_connect_gets_past_a_host_that_never_answers() -> None:
    from djscale.db import deadline

    opened = _Opened()

    def connect(params: object) -> _Opened:
        time.sleep(0.3)  # the first host's connect_timeout ran out; the second answered
        return opened

    wrapper = _Wrapper(_primary())
    wrapper.settings_dict = {"HOST": "a,b", "OPTIONS": {"connect_timeout": 2}}
    bounded = deadline._bounded_connect(wrapper, connect)
    with deadline.query_deadlines(0.1):  # alone it would have given up
        assert bounded({}) is opened
