"""The service client's circuit breakers: one per upstream service, exported as a metric.

The breaker itself is :class:`djscale.breaker.CircuitBreaker` (closed / open / half-open,
shared with the tiered cache's Redis breaker); it is re-exported here. A service's breaker
opens on its failure rate over a sliding window (``failure_rate``, ``minimum_calls``,
``window``) and refuses calls with :class:`~djscale.errors.CircuitOpen` for
``reset_timeout`` seconds before a trial call. :class:`BreakerRegistry` hands out one
breaker per service name and exports its state as the ``djscale_circuit_breaker_state``
gauge.
"""

from __future__ import annotations

import threading

from djscale.breaker import CircuitBreaker, Closed, HalfOpen, Open

__all__ = ["BreakerRegistry", "CircuitBreaker", "Closed", "HalfOpen", "Open", "breakers"]


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
