"""Stampede protection primitives: single-flight, XFetch, and the stamped value.

- :class:`SingleFlight`: within one process, concurrent callers asking for the same key
  share one computation (the first caller computes, the others wait for its result or
  its exception).
- :func:`should_recompute_early`: XFetch (Vattani, Chierichetti, Lowenstein, "Optimal
  Probabilistic Cache Stampede Prevention", VLDB 2015): a caller recomputes before expiry
  with a probability that grows as expiry nears and with the time the value took to
  compute, so a hot key is refreshed by one caller before it expires for everyone.
- :class:`Stamped`: how a computed value travels in L2 with its compute time (the
  ``delta`` of XFetch); readers unwrap it transparently.

The distributed lock across processes lives in :mod:`djscale.cache.l2` (``SET NX PX``)
and is used by :meth:`djscale.cache.TieredCache.get_or_set`.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight", "Stamped", "should_recompute_early"]

T = TypeVar("T")


class Stamped:
    """A cached value together with the seconds it took to compute."""

    __slots__ = ("delta", "value")

    def __init__(self, value: Any, delta: float) -> None:
        self.value = value
        self.delta = delta

    def __reduce__(self) -> tuple[Any, ...]:
        return (Stamped, (self.value, self.delta))


def should_recompute_early(*, remaining: float | None, delta: float, beta: float,
                           rand: Callable[[], float] = random.random) -> bool:
    """XFetch: True if this caller should refresh a value ``remaining`` s before expiry."""
    if remaining is None or delta <= 0 or beta <= 0:
        return False
    r = rand()
    if r <= 0.0:
        return True
    return -delta * beta * math.log(r) >= remaining


class _Call(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight:
    """Collapse concurrent calls for the same key into one (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[Any]] = {}

    def do(self, key: str, fn: Callable[[], T]) -> tuple[T, bool]:
        """Run ``fn`` once for all concurrent callers of ``key``.

        Return ``(result, leader)`` where ``leader`` is True for the caller that ran it.
        Followers receive the leader's result or re-raise its exception.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result, False  # type: ignore[return-value]
        try:
            call.result = fn()
            return call.result, True
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()

    def after_fork(self) -> None:
        """In a forked child: forget computations of threads that no longer exist."""
        self._lock = threading.Lock()
        self._calls = {}

    def in_flight(self, key: str) -> bool:
        """True if a computation of ``key`` is running in this process."""
        return key in self._calls
