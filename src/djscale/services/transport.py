"""Resilient httpx transports: time budget, retries and the circuit breaker.

As in httpx, retries live in the transport, not in the client: :class:`ResilientTransport`
(sync) and :class:`AsyncResilientTransport` wrap an ordinary connection-pooling httpx
transport and own, for one upstream service:

- a **time budget** per call, retries and backoff included (``timeout``; override per
  request with the ``djscale.timeout`` extension). Every attempt gets what is left of the
  budget, so a slow service answers :class:`~djscale.errors.ServiceTimeout` at the
  configured time, not at a multiple of it;
- **retries** with exponential backoff and full jitter, for idempotent requests only
  (see :mod:`djscale.services.policy`; override per request with ``djscale.retries``):
  after a connection error, a timeout, or a 502/503/504 answer;
- the service's **circuit breaker**: refused calls raise
  :class:`~djscale.errors.CircuitOpen` at once; connection errors, timeouts and 5xx
  answers count as failures.

Errors raised (see :mod:`djscale.errors`)::

    ServiceError
    ├── ServiceUnavailable   connection refused/reset, or no answer but 5xx
    │   └── CircuitOpen      the breaker refused the call
    └── ServiceTimeout       the time budget ran out

A final 5xx answer is returned as a response (the caller decides), not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from djscale.errors import ServiceError, ServiceTimeout, ServiceUnavailable
from djscale.services.breaker import CircuitBreaker
from djscale.services.policy import RetryPolicy, is_idempotent

__all__ = ["AsyncResilientTransport", "ResilientTransport"]

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""The limits of a transport built without any: what the service transports always used."""

TIMEOUT_EXTENSION = "djscale.timeout"
RETRIES_EXTENSION = "djscale.retries"

# The request never left this machine: repeating it cannot cause a second effect.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Call:
    """The bookkeeping of one call: budget, attempts, and whether to try again.

    Every decision of the sync and async transports lives here; their loops only do the
    I/O. Each turn of a loop runs one :meth:`attempt` around sending, reports an answer
    with :meth:`answered`, then returns ``result``, or closes ``discard`` and waits
    ``delay`` seconds before the next turn.
    """

    def __init__(self, owner: _Resilience, *, method: str, path: str, target: str,
                 idempotent: bool, budget: float | None = None,
                 retries: int | None = None) -> None:
        self.owner = owner
        self.method = method
        self.path = path
        self.target = target  # scheme://host:port, for messages
        self.budget = float(owner.timeout if budget is None else budget)
        self.deadline = owner.clock() + self.budget
        self.retries = int(owner.retry.retries if retries is None else retries)
        self.idempotent = idempotent
        self.attempts = 0  # retries made so far
        self.result: httpx.Response | None = None
        self.discard: httpx.Response | None = None
        self.delay = 0.0

    @classmethod
    def of(cls, owner: _Resilience, request: httpx.Request) -> _Call:
        """The call of an httpx request (budget and retries from its extensions)."""
        return cls(owner, method=request.method, path=request.url.path,
                   target=f"{request.url.scheme}://{request.url.netloc.decode()}",
                   idempotent=is_idempotent(request.method, request.headers),
                   budget=request.extensions.get(TIMEOUT_EXTENSION),
                   retries=request.extensions.get(RETRIES_EXTENSION))

    def remaining(self) -> float:
        return self.deadline - self.owner.clock()

    def start_attempt(self) -> float:
        """Ask the breaker; return what is left of the budget for this attempt."""
        remaining = self.remaining()
        if remaining <= 0:
            raise self.timeout_error()
        self.owner.breaker.before_call()
        return remaining

    def httpx_timeouts(self, remaining: float) -> dict[str, float]:
        """The ``timeout`` extension of an httpx attempt with ``remaining`` seconds."""
        return {"connect": min(self.owner.connect_timeout, remaining),
                "read": remaining, "write": remaining, "pool": remaining}

    @contextlib.contextmanager
    def attempt(self, request: httpx.Request | None = None) -> Iterator[float]:
        """One attempt: ask the breaker (and set ``request``'s timeouts), then judge how
        sending went; yields the seconds left of the budget.

        A transport error is recorded and, when the call may be retried, swallowed (with
        ``delay`` set); otherwise it is raised as a :class:`ServiceError`. Anything else
        (a cancellation...) leaves the breaker without a verdict and propagates.
        """
        remaining = self.start_attempt()
        if request is not None:
            request.extensions = {**request.extensions,
                                  "timeout": self.httpx_timeouts(remaining)}
        self.result = self.discard = None
        try:
            yield remaining
        except httpx.TransportError as exc:
            self.delay, error = self.on_error(exc)
            if self.delay < 0:
                raise error from exc
        except BaseException:
            self.owner.breaker.on_abandon()
            raise

    def answered(self, response: httpx.Response) -> None:
        """Record an answer: final (``result``) or to discard before a retry."""
        delay = self.on_response(response.status_code)
        if delay < 0:
            self.result = response
        else:
            self.discard, self.delay = response, delay

    def timeout_error(self) -> ServiceTimeout:
        return ServiceTimeout(
            f"service {self.owner.service!r} did not answer {self.method} "
            f"{self.path} within {self.budget:g}s "
            f"({self.attempts + 1} attempt(s)); it may be overloaded or down",
            service=self.owner.service)

    def on_error(self, exc: Exception) -> tuple[float, ServiceError]:
        """Record a transport error; return (delay before retry, error if giving up)."""
        self.owner.breaker.on_failure()
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, _NOT_SENT):
            error: ServiceError = self.timeout_error()
        elif isinstance(exc, httpx.TimeoutException) and self.remaining() <= 0:
            error = self.timeout_error()
        else:
            error = ServiceUnavailable(
                f"cannot reach service {self.owner.service!r} at {self.target}: "
                f"{type(exc).__name__}: {exc or 'no details'}", service=self.owner.service)
        may_retry = self.idempotent or isinstance(exc, _NOT_SENT)
        return (self._delay() if may_retry else -1.0), error

    def on_response(self, status: int) -> float:
        """Record an answer; return the delay before a retry, or -1 to return it."""
        if status >= 500:
            self.owner.breaker.on_failure()
        else:
            self.owner.breaker.on_success()
        if self.idempotent and self.owner.retry.retry_status(status):
            return self._delay()
        return -1.0

    def _delay(self) -> float:
        if self.attempts >= self.retries:
            return -1.0
        delay = self.owner.retry.delay(self.attempts + 1)
        # A retry that could not finish before the deadline only adds load.
        if self.remaining() - delay <= 0.001:
            return -1.0
        self.attempts += 1
        return delay


class _Resilience:
    def __init__(self, *, service: str, timeout: float, connect_timeout: float,
                 retry: RetryPolicy | None, breaker: CircuitBreaker | None,
                 clock: Callable[[], float]) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0 seconds")
        self.service = service
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(service)
        self.clock = clock


class ResilientTransport(_Resilience, httpx.BaseTransport):
    """Sync transport for one service: budget, retries, breaker around ``transport``."""

    def __init__(self, *, service: str, timeout: float = 5.0, connect_timeout: float = 1.0,
                 retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 transport: httpx.BaseTransport | None = None,
                 limits: httpx.Limits | None = None,
                 sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(service=service, timeout=timeout, connect_timeout=connect_timeout,
                         retry=retry, breaker=breaker, clock=clock)
        self.inner = transport or httpx.HTTPTransport(limits=limits or DEFAULT_LIMITS)
        self.sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` within the budget, retrying what may be retried."""
        call = _Call.of(self, request)
        while True:
            with call.attempt(request):
                call.answered(self.inner.handle_request(request))
            if call.result is not None:
                return call.result
            if call.discard is not None:
                call.discard.close()
            self.sleep(call.delay)

    def close(self) -> None:
        """Close the pooled connections."""
        self.inner.close()


class AsyncResilientTransport(_Resilience, httpx.AsyncBaseTransport):
    """Async twin of :class:`ResilientTransport`."""

    def __init__(self, *, service: str, timeout: float = 5.0, connect_timeout: float = 1.0,
                 retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 limits: httpx.Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(service=service, timeout=timeout, connect_timeout=connect_timeout,
                         retry=retry, breaker=breaker, clock=clock)
        if transport is None:
            # Not httpx.AsyncHTTPTransport: its pool costs CPU per open connection on every
            # request (see djscale.services.aiohttp_transport). Imported here: aiohttp is
            # an extra (djscale[gateway]); a sync-only core install never needs it.
            from djscale.services.aiohttp_transport import AiohttpTransport

            transport = AiohttpTransport(limits=limits or DEFAULT_LIMITS)
        self.inner = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` within the budget, retrying what may be retried."""
        call = _Call.of(self, request)
        while True:
            with call.attempt(request):
                call.answered(await self.inner.handle_async_request(request))
            if call.result is not None:
                return call.result
            if call.discard is not None:
                await call.discard.aclose()
            await asyncio.sleep(call.delay)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.inner.aclose()
