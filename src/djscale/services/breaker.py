"""Circuit breaker: stop calling a service that keeps failing, then probe it.

The state pattern of pybreaker: :class:`CircuitBreaker` delegates every call to its
current state object (:class:`Closed`, :class:`Open`, :class:`HalfOpen`), each with
``before_call``, ``on_success`` and ``on_failure``.

- **closed**: calls go through; outcomes are recorded over a sliding time window. When
  the window holds at least ``minimum_calls`` outcomes and the failure rate reaches
  ``failure_rate``, the breaker opens.
- **open**: calls are refused at once with :class:`~djscale.errors.CircuitOpen` (no
  connection, no waiting) for ``reset_timeout`` seconds; then it turns half-open.
- **half-open**: up to ``trial_calls`` calls go through as trials; one success closes the
  breaker (with a fresh window), one failure opens it again.

A breaker belongs to one upstream service and lives in the process's memory (each
process learns on its own; a shared Redis store is left for later). It is thread-safe
and never blocks, so async code may use it as is. :class:`BreakerRegistry` hands out one
breaker per service name and exports its state as the ``djscale_circuit_breaker_state``
gauge.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from djscale.errors import CircuitOpen

__all__ = ["BreakerRegistry", "CircuitBreaker", "Closed", "HalfOpen", "Open", "breakers"]


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
    """Calls go through; the failure rate over the window decides when to open."""

    name = "closed"

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.outcomes: deque[tuple[float, bool]] = deque()

    def _record(self, ok: bool) -> None:
        b = self.breaker
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
        """Record a failure; open when the failure rate over the window is too high."""
        self._record(False)


class Open(_State):
    """Calls are refused until ``reset_timeout`` has passed."""

    name = "open"

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.until = breaker.clock() + breaker.reset_timeout

    def before_call(self) -> None:
        """Refuse the call, or turn half-open (and let it through) once the time is up."""
        b = self.breaker
        remaining = self.until - b.clock()
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
        """The service answered: close the breaker."""
        self.breaker._enter(Closed(self.breaker))

    def on_failure(self) -> None:
        """The trial failed: open again for another ``reset_timeout``."""
        self.breaker._enter(Open(self.breaker))

    def on_abandon(self) -> None:
        """Free the trial slot so that another call can try."""
        self.in_flight = max(0, self.in_flight - 1)


class CircuitBreaker:
    """One upstream's breaker; see the module docstring for the states."""

    def __init__(self, name: str, *, failure_rate: float = 0.5, minimum_calls: int = 5,
                 window: float = 10.0, reset_timeout: float = 5.0, trial_calls: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < failure_rate <= 1 or minimum_calls < 1 or window <= 0 \
                or reset_timeout < 0 or trial_calls < 1:
            raise ValueError(
                "CircuitBreaker: need 0 < failure_rate <= 1, minimum_calls >= 1, "
                "window > 0, reset_timeout >= 0 and trial_calls >= 1")
        self.name = name
        self.failure_rate = failure_rate
        self.minimum_calls = minimum_calls
        self.window = window
        self.reset_timeout = reset_timeout
        self.trial_calls = trial_calls
        self.clock = clock
        self._lock = threading.RLock()
        self._state: _State = Closed(self)
        self._listeners: list[Callable[[CircuitBreaker, str, str], None]] = []

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (open turns half-open on the next call)."""
        return self._state.name

    def add_listener(self, listener: Callable[[CircuitBreaker, str, str], None]) -> None:
        """Call ``listener(breaker, old_state, new_state)`` on every state change."""
        self._listeners.append(listener)

    def _enter(self, state: _State) -> None:
        old, self._state = self._state.name, state
        for listener in self._listeners:
            listener(self, old, state.name)

    def before_call(self) -> None:
        """Raise :class:`~djscale.errors.CircuitOpen` if the call must not be made."""
        with self._lock:
            self._state.before_call()

    def on_success(self) -> None:
        """Report that a call let through by :meth:`before_call` succeeded."""
        with self._lock:
            self._state.on_success()

    def on_failure(self) -> None:
        """Report that a call let through by :meth:`before_call` failed."""
        with self._lock:
            self._state.on_failure()

    def on_abandon(self) -> None:
        """Report that a call let through ended without success or failure."""
        with self._lock:
            self._state.on_abandon()

    def reset(self) -> None:
        """Close the breaker and forget the recorded outcomes."""
        with self._lock:
            self._enter(Closed(self))


def _export_state(breaker: CircuitBreaker, old: str, new: str) -> None:
    """Publish the state as the ``djscale_circuit_breaker_state`` gauge."""
    from djscale.metrics import record_circuit_state

    record_circuit_state(service=breaker.name, state=new)


class BreakerRegistry:
    """One breaker per service name, created on first use with the given settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str, *, failure_rate: float = 0.5, minimum_calls: int = 5,
            window: float = 10.0, reset_timeout: float = 5.0) -> CircuitBreaker:
        """The breaker of service ``name`` (settings apply only when it is created)."""
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, failure_rate=failure_rate,
                                         minimum_calls=minimum_calls, window=window,
                                         reset_timeout=reset_timeout)
                breaker.add_listener(_export_state)
                _export_state(breaker, "", breaker.state)
                self._breakers[name] = breaker
            return breaker

    def clear(self) -> None:
        """Forget every breaker (tests)."""
        with self._lock:
            self._breakers.clear()


breakers = BreakerRegistry()
"""The process-wide registry used by clients built from the topology or settings."""
