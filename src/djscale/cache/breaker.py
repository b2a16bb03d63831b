"""Circuit breaker guarding the Redis (L2) calls of one cache location.

Three states, as in pybreaker: *closed* (calls go through; ``failure_threshold``
consecutive failures open it), *open* (calls are refused at once for a back-off that
doubles on each failed trial, from ``reset_timeout`` up to ``max_reset_timeout``) and
*half-open* (one trial call is let through; success closes, failure re-opens). A dead
Redis therefore costs one refused connection per back-off period instead of a connect
timeout on every cache call, and the cache recovers by itself when Redis returns.

The breaker only keeps state; it does not call Redis and does not log.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Thread-safe closed / open / half-open state for one dependency."""

    def __init__(self, *, failure_threshold: int = 2, reset_timeout: float = 0.5,
                 max_reset_timeout: float = 5.0) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.reset_timeout = reset_timeout
        self.max_reset_timeout = max_reset_timeout
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._backoff = reset_timeout
        self._opened_at = 0.0
        self._trial_running = False

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held it)."""
        self._lock = threading.Lock()
        self._trial_running = False

    @property
    def state(self) -> State:
        """The current state (an open breaker whose back-off ended reports half-open)."""
        if self._state == "open" and time.monotonic() - self._opened_at >= self._backoff:
            return "half-open"
        return self._state

    def allow(self) -> bool:
        """Return True if a call may go through now."""
        if self._state == "closed":
            return True
        with self._lock:
            if self._state == "open":
                if time.monotonic() - self._opened_at < self._backoff:
                    return False
                self._state = "half-open"
                self._trial_running = False
            if self._trial_running:
                return False
            self._trial_running = True
            return True

    def success(self) -> None:
        """Record a successful call."""
        if self._state == "closed" and self._failures == 0:
            return
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._backoff = self.reset_timeout
            self._trial_running = False

    def failure(self) -> bool:
        """Record a failed call; return True if this failure opened the breaker."""
        with self._lock:
            self._failures += 1
            if self._state == "half-open":
                self._backoff = min(self._backoff * 2, self.max_reset_timeout)
            elif self._state == "open" or self._failures < self.failure_threshold:
                return False
            was_closed = self._state == "closed"
            self._state = "open"
            self._opened_at = time.monotonic()
            self._trial_running = False
            return was_closed
