"""Retry policy: which requests may be tried again, and how long to wait in between.

A request is retried only when repeating it cannot do harm: idempotent methods
(GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or a POST/PATCH carrying an
``Idempotency-Key`` header. A connection that could not even be opened never sent the
request, so it may be retried whatever the method. Waits use exponential backoff with
"full jitter" (a uniform draw below the exponential cap), which spreads the retries of
many clients instead of synchronising them.

This module is pure logic: no I/O, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "IDEMPOTENCY_KEY",
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "is_idempotent",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods that RFC 9110 defines as idempotent."""

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Answers that say "not now" rather than "no": worth another attempt."""

IDEMPOTENCY_KEY = "Idempotency-Key"
"""Header that makes a POST or PATCH safe to repeat (the server de-duplicates by it)."""


def is_idempotent(method: str, headers: Mapping[str, str]) -> bool:
    """Return True if a request may be sent twice without a second effect."""
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    return any(k.lower() == IDEMPOTENCY_KEY.lower() and v for k, v in headers.items())


@dataclass(frozen=True)
class RetryPolicy:
    """How many extra attempts an idempotent call gets, and the waits between them.

    ``retries`` extra attempts; before attempt ``n`` (1-based) wait a uniform random time
    in ``[0, min(max_backoff, backoff * 2 ** (n - 1))]``.
    """

    retries: int = 2
    backoff: float = 0.05
    max_backoff: float = 1.0
    statuses: frozenset[int] = RETRYABLE_STATUSES
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy: retries, backoff and max_backoff must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        cap = min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 1)))
        return self.rng.uniform(0.0, cap)

    def retry_status(self, status: int) -> bool:
        """Return True if an answer with ``status`` is worth another attempt."""
        return status in self.statuses
