"""The circuit breaker of djscale: stop calling a dependency that keeps failing, then probe it.

One implementation for every dependency that needs one: the service client
(:mod:`djscale.services`, one breaker per upstream service) and the tiered cache's Redis
(:mod:`djscale.cache.l2`, one per cache location). The state pattern of pybreaker:
:class:`CircuitBreaker` delegates every call to its current state object (:class:`Closed`,
:class:`Open`, :class:`HalfOpen`), each with ``before_call``, ``on_success`` and
``on_failure``.

- **closed**: calls go through. It opens after ``consecutive_failures`` failures in a row
  (when set), or when the last ``window`` seconds hold at least ``minimum_calls`` outcomes
  and their failure rate reaches ``failure_rate`` (when set).
- **open**: calls are refused at once (:meth:`CircuitBreaker.before_call` raises
  :class:`~djscale.errors.CircuitOpen`, :meth:`CircuitBreaker.allow` returns False) for a
  back-off of ``reset_timeout`` seconds; then it turns half-open. With
  ``max_reset_timeout`` the back-off doubles after each failed trial, up to that value, so
  a dependency that stays down costs one refused call per back-off period.
- **half-open**: up to ``trial_calls`` calls go through as trials; one success closes the
  breaker (fresh window, back-off reset), one failure opens it again.

A breaker lives in the process's memory (each process learns on its own), is
thread-safe and never blocks, so async code may use it as is. It neither logs nor records
metrics: its owner does, through :meth:`CircuitBreaker.add_listener`. This module must
not import the components that use it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from djscale.errors import CircuitOpen

__all__ = ["CircuitBreaker", "Closed", "HalfOpen", "Open"]

Listener = Callable[["CircuitBreaker", str, str], None]


class _State:
    name = ""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def before_call(self) -> None:
        """Raise CircuitOpen to refuse the call; otherwise let it through."""

    def on_success(self) -> None:
        """A call that went through succeeded."""

    def on_failure(self) -> None:
        """A call that went through failed."""

    def on_abandon(self) -> None:
        """A call that went through ended without a verdict (e.g. it was cancelled)."""


class Closed(_State):
    """Calls go through; consecutive failures or the failure rate decide when to open."""

    name = "closed"

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.in_a_row = 0

    def _record(self, ok: bool) -> None:
        b = self.breaker
        self.in_a_row = 0 if ok else self.in_a_row + 1
        if ok and b.failure_rate is None:
            return  # nothing else to count: keep the success path cheap
        if not ok and b.consecutive_failures is not None \
                and self.in_a_row >= b.consecutive_failures:
            b._enter(Open(b))
            return
        if b.failure_rate is None:
            return
        now = b.clock()
        self.outcomes.append((now, ok))
        while self.outcomes and self.outcomes[0][0] <= now - b.window:
            self.outcomes.popleft()
        if ok or len(self.outcomes) < b.minimum_calls:
            return
        failures = sum(1 for _, good in self.outcomes if not good)
        if failures / len(self.outcomes) >= b.failure_rate:
            b._enter(Open(b))

    def on_success(self) -> None:
        """Record a success."""
        self._record(True)

    def on_failure(self) -> None:
        """Record a failure; open when too many failed in a row or over the window."""
        self._record(False)


class Open(_State):
    """Calls are refused until the back-off has passed."""

    name = "open"

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.until = breaker.clock() + breaker.backoff

    def remaining(self) -> float:
        """Seconds until the next trial call may go through."""
        return self.until - self.breaker.clock()

    def before_call(self) -> None:
        """Refuse the call, or turn half-open (and let it through) once the time is up."""
        b = self.breaker
        remaining = self.remaining()
        if remaining > 0:
            raise CircuitOpen(
                f"circuit breaker of service {b.name!r} is open after repeated failures; "
                f"next trial call in {remaining:.1f}s",
                service=b.name, retry_after=remaining,
            )
        trial = HalfOpen(b)
        b._enter(trial)
        trial.before_call()


class HalfOpen(_State):
    """A few trial calls decide between closing and opening again."""

    name = "half-open"

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.in_flight = 0

    def before_call(self) -> None:
        """Let up to ``trial_calls`` calls through at a time; refuse the others."""
        b = self.breaker
        if self.in_flight >= b.trial_calls:
            raise CircuitOpen(
                f"circuit breaker of service {b.name!r} is half-open and its trial call "
                "is still running", service=b.name, retry_after=0.0,
            )
        self.in_flight += 1

    def on_success(self) -> None:
        """The dependency answered: close the breaker and reset the back-off."""
        b = self.breaker
        b.backoff = b.reset_timeout
        b._enter(Closed(b))

    def on_failure(self) -> None:
        """The trial failed: open again, for a longer back-off when it grows."""
        b = self.breaker
        if b.max_reset_timeout is not None:
            b.backoff = min(b.backoff * 2, b.max_reset_timeout)
        b._enter(Open(b))

    def on_abandon(self) -> None:
        """Free the trial slot so that another call can try."""
        self.in_flight = max(0, self.in_flight - 1)


class CircuitBreaker:
    """One dependency's breaker; see the module docstring for the states and options."""

    def __init__(self, name: str, *, failure_rate: float | None = 0.5, minimum_calls: int = 5,
                 window: float = 10.0, consecutive_failures: int | None = None,
                 reset_timeout: float = 5.0, max_reset_timeout: float | None = None,
                 trial_calls: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if (failure_rate is not None and not 0 < failure_rate <= 1) or minimum_calls < 1 \
                or window <= 0 or reset_timeout < 0 or trial_calls < 1 \
                or (consecutive_failures is not None and consecutive_failures < 1) \
                or (max_reset_timeout is not None and max_reset_timeout < reset_timeout) \
                or (failure_rate is None and consecutive_failures is None):
            raise ValueError(
                "CircuitBreaker: need 0 < failure_rate <= 1, minimum_calls >= 1, "
                "window > 0, reset_timeout >= 0, trial_calls >= 1, consecutive_failures "
                ">= 1, max_reset_timeout >= reset_timeout, and failure_rate or "
                "consecutive_failures set")
        self.name = name
        self.failure_rate = failure_rate
        self.minimum_calls = minimum_calls
        self.window = window
        self.consecutive_failures = consecutive_failures
        self.reset_timeout = reset_timeout
        self.max_reset_timeout = max_reset_timeout
        self.trial_calls = trial_calls
        self.clock = clock
        self.backoff = reset_timeout
        """How long the next opening lasts (grows after failed trials, see above)."""
        self._lock = threading.RLock()
        self._state: _State = Closed(self)
        self._listeners: list[Listener] = []

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker whose back-off is over
        reports ``half-open``: the next call is a trial)."""
        current = self._state
        if isinstance(current, Open) and current.remaining() <= 0:
            return HalfOpen.name
        return current.name

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` on every state change."""
        self._listeners.append(listener)

    def _enter(self, state: _State) -> None:
        old, self._state = self._state.name, state
        for listener in self._listeners:
            listener(self, old, state.name)

    def before_call(self) -> None:
        """Raise :class:`~djscale.errors.CircuitOpen` if the call must not be made."""
        if type(self._state) is Closed:
            return  # nothing to decide: no lock on the hot path
        with self._lock:
            self._state.before_call()

    def allow(self) -> bool:
        """True if a call may be made now (:meth:`before_call` without an exception)."""
        try:
            self.before_call()
        except CircuitOpen:
            return False
        return True

    def on_success(self) -> None:
        """Report that a call let through by :meth:`before_call` succeeded."""
        current = self._state
        if type(current) is Closed and self.failure_rate is None and not current.in_a_row:
            return  # closed with nothing to count: no lock on the hot path
        with self._lock:
            self._state.on_success()

    def on_failure(self) -> bool:
        """Report that a call let through failed; True if this failure opened the breaker."""
        with self._lock:
            was_closed = type(self._state) is Closed
            self._state.on_failure()
            return was_closed and type(self._state) is Open

    def on_abandon(self) -> None:
        """Report that a call let through ended without success or failure."""
        with self._lock:
            self._state.on_abandon()

    def reset(self) -> None:
        """Close the breaker, reset the back-off and forget the recorded outcomes."""
        with self._lock:
            self.backoff = self.reset_timeout
            self._enter(Closed(self))

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held it), no trial running."""
        self._lock = threading.RLock()
        if isinstance(self._state, HalfOpen):
            self._state.in_flight = 0
