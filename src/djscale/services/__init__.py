"""Calls between services: resilient clients and the ASGI API gateway.

- :mod:`~djscale.services.policy`: which requests may be retried, backoff with jitter
- :mod:`~djscale.services.breaker`: circuit breaker per upstream (closed/open/half-open)
- :mod:`~djscale.services.transport`: httpx transports owning budget, retries, breaker
- :mod:`~djscale.services.client`: :class:`ServiceClient` / :class:`AsyncServiceClient`
- :mod:`~djscale.services.context`: request id and auth carried to outgoing calls
- :mod:`~djscale.services.ratelimit`: per-client sliding-window limit in Redis
- :mod:`~djscale.services.gateway`: the ASGI gateway built from the topology

Errors are :class:`~djscale.errors.ServiceError` and its subclasses.
"""

from djscale.errors import CircuitOpen, ServiceError, ServiceTimeout, ServiceUnavailable
from djscale.services.breaker import BreakerRegistry, CircuitBreaker, breakers
from djscale.services.client import AsyncServiceClient, ServiceClient, service_client
from djscale.services.context import PropagationMiddleware, propagate
from djscale.services.policy import RetryPolicy, is_idempotent
from djscale.services.transport import AsyncResilientTransport, ResilientTransport

__all__ = [
    "AsyncResilientTransport",
    "AsyncServiceClient",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitOpen",
    "PropagationMiddleware",
    "ResilientTransport",
    "RetryPolicy",
    "ServiceClient",
    "ServiceError",
    "ServiceTimeout",
    "ServiceUnavailable",
    "breakers",
    "is_idempotent",
    "propagate",
    "service_client",
]
