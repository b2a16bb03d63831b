"""Application-side deadlines of database work: a silent server costs one deadline, not a worker.

``statement_timeout`` is enforced by the server and TCP keepalives / ``tcp_user_timeout``
by the kernel; neither frees a worker whose server is *frozen* (a paused VM, a stopped
process: on loopback the kernel even keeps acknowledging its TCP segments). So djscale
bounds the wait itself, from the client side:

- one :class:`Watchdog` thread per process holds a heap of :class:`Timer` s (no thread per
  query). :func:`bound_query`, an execute wrapper on every member of a replication group,
  arms a timer for each statement; when it fires, the connection's socket is shut down
  (``shutdown(SHUT_RDWR)`` on a duplicate of libpq's descriptor), so the blocked worker
  gets an error at once and the connection is never reused. The worker then raises
  :class:`QueryDeadlineExceeded` (an ``OperationalError``): for a replica the read is
  failed over (:mod:`djscale.db.failover` marks it down and a GET runs again on another
  replica or the primary); for a primary it becomes a fast 503
  (:mod:`djscale.http.unavailable`).
- Opening a connection is bounded by the same deadline (libpq's ``connect_timeout`` cannot
  go below 2 s, and a frozen server on a live host accepts TCP and then says nothing).
- What Django sends to the server outside execute wrappers is bounded the same way: the
  health check of a persistent connection (``CONN_HEALTH_CHECKS``: a raw ``SELECT 1``),
  ``COMMIT`` and ``ROLLBACK`` (a commit abandoned this way may have committed: the client
  gets a 503 for it, as for any connection lost after ``COMMIT`` was sent).
- An alias whose deadline fired is **silent** until a background check (one thread per
  silent alias, a fresh connection and ``SELECT 1``) or the replica probe gets an answer
  (:func:`answered`): meanwhile statements
  and new connections on it (inside deadlines) fail at once instead of waiting a deadline,
  or ``connect_timeout`` (libpq's minimum is 2 s), on a server that accepts TCP but never
  answers. The check polls every
  :data:`RECHECK_SECONDS`, so work resumes within a fraction of a second of the server.

Deadlines apply inside HTTP requests (``request_started`` .. ``request_finished``) and
inside :func:`query_deadlines` blocks (Celery tasks, commands that want them); migrations
and management commands run without. Per group: ``query_deadline_ms`` (primary) and
``replica_query_deadline_ms`` (replicas) from the topology (0: no deadline);
``with query_deadlines(seconds)`` overrides both for a block (``None`` lifts them, for a
view that knowingly runs a long query). Server-side cursors (``.iterator()``) fetch outside
execute wrappers: only their first statement is bounded.

Hand-written because no library bounds a blocked libpq call from outside: psycopg's
``cancel()`` needs the server to answer (a frozen postmaster does not).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import OperationalError, connections

from djscale.db import config, multihost

__all__ = ["RECHECK_SECONDS", "QueryDeadlineExceeded", "Timer", "Watchdog", "answered",
           "bound_query", "connect_allowance", "deadline_for", "install", "is_silent",
           "query_deadlines", "watchdog"]

log = logging.getLogger("djscale.db.deadline")

RECHECK_SECONDS = 0.2
"""Pause between two background checks of a silent server."""

TICK = 0.01
"""The watchdog's resolution: a deadline fires at most this late."""

_INHERIT: Any = object()


class QueryDeadlineExceeded(OperationalError):
    """A database server did not answer within the deadline (or is still silent)."""

    def __init__(self, alias: str, seconds: float, *, silent: bool = False) -> None:
        self.alias = alias
        self.seconds = seconds
        if silent:
            text = (f"database {alias!r} did not answer a recent query within "
                    f"{seconds * 1000:.0f} ms and has not answered since; not waiting on it")
        else:
            text = (f"database {alias!r} did not answer within {seconds * 1000:.0f} ms; "
                    "the query was abandoned and its connection closed")
        super().__init__(text)


# ---------------------------------------------------------------------- the watchdog


class Timer:
    """One armed deadline: either cancelled by its owner or fired by the watchdog, once."""

    __slots__ = ("_action", "_lock", "_state", "deadline")

    def __init__(self, deadline: float, action: Callable[[], None]) -> None:
        self.deadline = deadline
        self._action = action
        self._lock = threading.Lock()
        self._state = 0  # 0 armed, 1 cancelled, 2 fired

    def cancel(self) -> bool:
        """Disarm; True when the timer had not fired (False: the action ran, or runs now).

        Waits for a firing action to finish, so the caller sees its effect.
        """
        with self._lock:
            if self._state == 0:
                self._state = 1
                return True
            return self._state == 1

    @property
    def fired(self) -> bool:
        """True once the action ran."""
        return self._state == 2

    def fire(self) -> bool:
        """Run the action unless cancelled; True when it ran."""
        with self._lock:
            if self._state != 0:
                return False
            self._state = 2
            try:
                self._action()
            except Exception:  # the watchdog thread must never die
                log.exception("deadline action failed")
            return True


class Watchdog:
    """Fires the timers whose deadline passed, from one daemon thread (started on use).

    ``clock`` is injectable so :meth:`due` can be tested without a thread. After ``fork()``
    (gunicorn workers) the child starts its own thread on its first :meth:`arm`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._init()

    def _init(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")

    def _drop_cancelled(self) -> None:
        # Most timers are cancelled long before their deadline (the statement answered):
        # dropping them from the top keeps the heap small and the thread asleep.
        heap = self._heap
        while heap and heap[0][2]._state != 0:
            heapq.heappop(heap)

    def arm(self, seconds: float, action: Callable[[], None]) -> Timer:
        """Run ``action`` in ``seconds`` unless the returned timer is cancelled first."""
        if self._pid != os.getpid():
            self._init()  # the parent's thread did not survive fork()
        timer = Timer(self._clock() + seconds, action)
        with self._cond:
            self._drop_cancelled()
            heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="djscale-deadlines",
                                                daemon=True)
                self._thread.start()
            elif timer.deadline < self._wake_at:
                self._cond.notify()  # wake earlier than planned; else no wake per statement
        return timer

    def due(self, now: float | None = None) -> list[Timer]:
        """Remove and return the timers due at ``now`` that are still armed, earliest first."""
        now = self._clock() if now is None else now
        found = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now:
                timer = heapq.heappop(self._heap)[2]
                if timer._state == 0:
                    found.append(timer)
        return found

    def pending(self) -> int:
        """Entries in the heap (cancelled ones leave it when their deadline passes)."""
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            for timer in self.due():
                timer.fire()
            with self._cond:
                self._drop_cancelled()
                now = self._clock()
                if not self._heap:
                    self._wake_at = float("inf")
                    self._cond.wait()
                else:
                    # At most TICK late, and never a busy loop on a stream of deadlines.
                    self._wake_at = max(self._heap[0][0], now + TICK)
                    self._cond.wait(self._wake_at - now)


_watchdog = Watchdog()


def watchdog() -> Watchdog:
    """This process's watchdog."""
    return _watchdog


# ---------------------------------------------------------------------- scope


class _Scope:
    __slots__ = ("override",)

    def __init__(self, override: Any) -> None:
        self.override = override


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "djscale_query_deadlines", default=None)


@contextlib.contextmanager
def query_deadlines(seconds: float | None = _INHERIT) -> Iterator[None]:
    """Bound the database work of this block.

    Without an argument: the topology's deadlines (as in a request). ``seconds``: that
    deadline for every group member. ``None``: no deadline (a known-long query in a view).
    """
    install()
    token = _scope.set(_Scope(seconds))
    try:
        yield
    finally:
        _scope.reset(token)


def deadline_for(alias: str) -> float | None:
    """The deadline in seconds of a statement on ``alias`` now, or None (unbounded)."""
    scope = _scope.get()
    if scope is None:
        return None
    group = config.group_of(alias)
    if group is None:
        return None
    if scope.override is not _INHERIT:
        return float(scope.override) if scope.override else None
    ms = (group.replica_query_deadline_ms if alias in group.replicas
          else group.query_deadline_ms)
    return ms / 1000.0 if ms > 0 else None


# ---------------------------------------------------------------------- silent servers

_silent_lock = threading.Lock()
_silent: dict[str, threading.Thread] = {}
_silent_pid = os.getpid()


def is_silent(alias: str) -> bool:
    """True while ``alias`` has not answered since one of its deadlines fired."""
    return alias in _silent and _silent_pid == os.getpid()


def _mark_silent(alias: str) -> None:
    global _silent, _silent_lock, _silent_pid
    if _silent_pid != os.getpid():
        _silent, _silent_lock, _silent_pid = {}, threading.Lock(), os.getpid()
    with _silent_lock:
        if alias in _silent:
            return
        checker = threading.Thread(target=_recheck, args=(alias,), daemon=True,
                                   name=f"djscale-recheck-{alias}")
        _silent[alias] = checker
    checker.start()


def _recheck(alias: str) -> None:
    """Poll a silent server with fresh connections until it answers, then clear it."""
    import psycopg

    from djscale.db.probe import connection_kwargs

    try:
        kwargs = connection_kwargs(alias)
        kwargs["application_name"] = "djscale-deadline-recheck"
        while True:
            try:
                opened = multihost.connect(lambda params: psycopg.connect(**params), kwargs)
                with opened as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.Error:
                time.sleep(RECHECK_SECONDS)
        log.warning("database %s answers again", alias)
    except Exception:  # never leave an alias silent forever because of a bug here
        log.exception("re-checking database %s failed", alias)
    finally:
        with _silent_lock:
            if _silent.get(alias) is threading.current_thread():  # not a newer checker's
                del _silent[alias]


def answered(alias: str) -> None:
    """Note that ``alias`` answered (the replica probe saw it): it is no longer silent."""
    if _silent_pid == os.getpid():
        with _silent_lock:
            _silent.pop(alias, None)


def _take_out(alias: str, seconds: float) -> None:
    """A replica is marked down in this process's pool; any alias becomes silent."""
    group = config.group_of(alias)
    if group is not None and alias in group.replicas:
        from djscale.db.pool import get_pool

        pool = get_pool(group.name)
        if pool is not None:
            pool.mark_down(alias, f"no answer within {seconds * 1000:.0f} ms")
    _mark_silent(alias)


def _abandon(conn: Any, alias: str, seconds: float) -> None:
    """Watchdog action: free the worker blocked on ``conn`` and take ``alias`` out."""
    raw = getattr(conn, "connection", None)
    fd = -1
    with contextlib.suppress(Exception):
        fd = int(raw.pgconn.socket) if raw is not None else -1
    if fd >= 0:
        try:
            dup = socket.socket(fileno=os.dup(fd))
        except OSError:
            dup = None
        if dup is not None:
            with contextlib.suppress(OSError):
                dup.shutdown(socket.SHUT_RDWR)
            dup.close()  # only the duplicate: libpq still owns (and later closes) fd
    log.warning("database %s did not answer within %.0f ms: query abandoned", alias,
                seconds * 1000)
    _take_out(alias, seconds)


# ---------------------------------------------------------------------- hooks


def bound_query(execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                context: dict[str, Any]) -> Any:
    """Execute wrapper: abandon the statement when the server does not answer in time."""
    conn = context["connection"]
    seconds = deadline_for(conn.alias)
    if seconds is None:
        return execute(sql, params, many, context)
    if is_silent(conn.alias):
        raise QueryDeadlineExceeded(conn.alias, seconds, silent=True)
    return _armed(conn, seconds, execute, sql, params, many, context)


def _armed(conn: Any, seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with the watchdog armed to abandon ``conn`` after ``seconds``."""
    timer = _watchdog.arm(seconds, lambda: _abandon(conn, conn.alias, seconds))
    try:
        result = fn(*args)
    except Exception as exc:
        if timer.cancel():
            raise
        raise QueryDeadlineExceeded(conn.alias, seconds) from exc
    if not timer.cancel():
        # It fired as the answer arrived: the socket is gone, the connection with it. For
        # is_usable() (False when its SELECT 1 fails) raising also keeps Django from
        # reconnecting and waiting connect_timeout on a silent server.
        raise QueryDeadlineExceeded(conn.alias, seconds)
    return result


_PATCHED = "_djscale_deadlines"


def _bounded(conn: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a method of ``conn`` that talks to the server) under the deadline."""

    def call(*args: Any) -> Any:
        seconds = deadline_for(conn.alias)
        if seconds is None or conn.connection is None:
            return fn(*args)
        return _armed(conn, seconds, fn, *args)

    return call


def connect_allowance(settings_dict: Any) -> float:
    """Extra seconds a connect to a multi-host alias (``HOST="h1,h2,h3"``) may take.

    libpq (and psycopg) try the hosts one after the other, each for up to
    ``connect_timeout`` (at least 2 s). A Patroni group's aliases list every node: when
    the first node's machine is cut off (packets dropped, no refusal), reaching the leader
    behind it takes one ``connect_timeout`` per host skipped, and a connect deadline of
    ``query_deadline_ms`` alone would give up before the second host was ever tried.
    """
    hosts = [h for h in str(settings_dict.get("HOST") or "").split(",") if h.strip()]
    if len(hosts) < 2:
        return 0.0
    options = settings_dict.get("OPTIONS") or {}
    try:
        per_host = max(2.0, float(options.get("connect_timeout") or 2))
    except (TypeError, ValueError):
        per_host = 2.0
    return per_host * (len(hosts) - 1)


def _bounded_connect(conn: Any, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``get_new_connection`` under the deadline (libpq's ``connect_timeout`` is >= 2 s).

    The connect runs in a short-lived thread (connections are opened rarely: they persist
    or come from a pool); past the deadline the worker goes on with an error and the
    thread closes whatever it eventually opens. A multi-host alias gets
    :func:`connect_allowance` on top (one ``connect_timeout`` per host it may skip).
    """

    def call(conn_params: Any) -> Any:
        seconds = deadline_for(conn.alias)
        if seconds is not None and is_silent(conn.alias):
            raise QueryDeadlineExceeded(conn.alias, seconds, silent=True)
        if seconds is not None:
            seconds += connect_allowance(conn.settings_dict)
        if seconds is None or (conn.settings_dict.get("OPTIONS") or {}).get("pool"):
            return multihost.connect(fn, conn_params)
        box: dict[str, Any] = {}
        lock = threading.Lock()
        done = threading.Event()

        def run() -> None:
            try:
                box["conn"] = multihost.connect(fn, conn_params)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
                box["error"] = exc
            with lock:
                done.set()
                late = box.get("abandoned", False)
            if late and "conn" in box:
                with contextlib.suppress(Exception):
                    box["conn"].close()

        threading.Thread(target=run, name=f"djscale-connect-{conn.alias}", daemon=True).start()
        if not done.wait(seconds):
            with lock:
                if not done.is_set():
                    box["abandoned"] = True
            if box.get("abandoned"):
                log.warning("database %s did not accept a connection within %.0f ms",
                            conn.alias, seconds * 1000)
                _take_out(conn.alias, seconds)
                raise QueryDeadlineExceeded(conn.alias, seconds)
        if "error" in box:
            raise box["error"]
        return box["conn"]

    return call


def _patch(conn: Any) -> None:
    """Bound what this connection wrapper sends outside execute wrappers.

    Django's health check (``is_usable``), ``COMMIT`` and ``ROLLBACK`` talk to the server
    without going through execute wrappers; a connect to a silent alias fails at once
    (in ``get_new_connection``). ``connect`` and ``cursor`` are left alone: Django's test
    cases wrap and unwrap those on the instance (``_add_databases_failures``), and a patch
    over their wrapper would make the unwrap fail and leave every later test forbidden
    to use that database.
    """
    if getattr(conn, _PATCHED, False):
        return
    conn.is_usable = _bounded(conn, conn.is_usable)
    conn._commit = _bounded(conn, conn._commit)
    conn._rollback = _bounded(conn, conn._rollback)
    conn.get_new_connection = _bounded_connect(conn, conn.get_new_connection)
    setattr(conn, _PATCHED, True)


def install() -> None:
    """Put the hooks on this thread's connection wrappers of every group member."""
    for group in config.groups().values():
        for alias in group.aliases:
            if alias not in connections.settings:
                continue
            conn = connections[alias]
            if bound_query not in conn.execute_wrappers:
                # Outermost, so the time of every other wrapper is bounded too.
                conn.execute_wrappers.insert(0, bound_query)
            _patch(conn)


def _request_started(**kwargs: Any) -> None:
    try:
        install()
    except Exception:  # a misconfiguration is reported by the checks, not here
        log.debug("query deadlines not installed", exc_info=True)
        return
    _scope.set(_Scope(_INHERIT))


def _request_finished(**kwargs: Any) -> None:
    _scope.set(None)


request_started.connect(_request_started, dispatch_uid="djscale.db.deadline.start")
request_finished.connect(_request_finished, dispatch_uid="djscale.db.deadline.finish")
