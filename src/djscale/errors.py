"""The djscale exception hierarchy.

::

    DjscaleError
    ├── TopologyError          the topology file is missing, malformed or invalid
    ├── ClusterError           a local-cluster operation failed
    │   └── ServiceStartError  one service did not become ready (names it, shows its log)
    ├── RoutingError           no database can serve a query
    │   ├── NoReplicaAvailable no usable replica and fallback to the primary is disabled
    │   ├── ShardKeyMissing    a query on a sharded model gives no way to find its shard
    │   └── ShardMoved         a write reached a logical shard's old database (retry it)
    ├── ShardMoveError         an online shard move could not be done (nothing was lost)
    ├── ConfigurationError     settings that djscale cannot work with
    │   └── MissingDependency  a feature needs a package of an extra (also an ImportError)
    ├── ServiceError           a call to another service failed (djscale.services)
    │   ├── ServiceUnavailable the service could not be reached, or kept answering 5xx
    │   │   └── CircuitOpen    its circuit breaker is open: the call was not even tried
    │   └── ServiceTimeout     no answer within the call's time budget
    ├── CacheError             the tiered cache cannot do what was asked (djscale.cache)
    │   ├── CacheUnavailable   Redis is unreachable for an operation that needs it (incr)
    │   └── CacheKeyError      a @cached argument cannot be encoded into a key
    ├── EventError             an event could not be published or consumed (djscale.events)
    ├── PurgeError             the edge (Varnish, a CDN) refused or missed a purge (djscale.edge)
    └── InefficientQueries     queries the project's query policy forbids (djscale.queries)
        ├── NPlusOneDetected   one line ran the same query shape again and again
        └── QueryBudgetExceeded more queries than a view's, task's or test's budget

Every message says what went wrong and what to do about it; the CLI prints the message
on one line and exits with status 2, never a traceback.
"""

from __future__ import annotations


class DjscaleError(Exception):
    """Base class of every error raised by djscale."""


class TopologyError(DjscaleError):
    """The topology file is missing, malformed, or has an invalid value."""


class ClusterError(DjscaleError):
    """A local-cluster operation failed."""


class ServiceStartError(ClusterError):
    """A service of the local cluster failed to start or to become ready."""

    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        self.service = service
        self.reason = reason
        self.log_tail = log_tail
        message = f"service {service!r} failed to start: {reason}"
        if log_tail:
            message += f"\n--- last lines of its log ---\n{log_tail}"
        super().__init__(message)


class RoutingError(DjscaleError):
    """No database alias can serve a query."""


class NoReplicaAvailable(RoutingError):
    """No replica is usable and falling back to the primary is disabled."""


class ShardKeyMissing(RoutingError):
    """A query on a sharded model gives no way to find its shard."""


class ShardMoved(RoutingError):
    """A write reached the database a logical shard was moved away from; retry it."""


class ShardMoveError(DjscaleError):
    """An online move of a logical shard failed or was refused; the map was not flipped."""


class ConfigurationError(DjscaleError):
    """Django settings that djscale cannot work with."""


class MissingDependency(ConfigurationError, ImportError):
    """A feature needs a package of one of djscale's extras, and it is not installed.

    Also an :class:`ImportError`, so code that treats a missing module as "feature off"
    still does. The message names the package and the ``pip install 'djscale[extra]'``
    that brings it.
    """

    def __init__(self, package: str, *, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        self.feature = feature
        super().__init__(f"{feature} needs {package}, which is not installed: "
                         f"pip install 'djscale[{extra}]'")


class ServiceError(DjscaleError):
    """A call to another service failed; ``service`` names it."""

    def __init__(self, message: str, *, service: str = "") -> None:
        self.service = service
        super().__init__(message)


class ServiceUnavailable(ServiceError):
    """The service could not be reached, or kept answering 502/503/504 after retries."""


class CircuitOpen(ServiceUnavailable):
    """The service's circuit breaker is open: the call was refused without trying it.

    ``retry_after`` is how many seconds remain until a trial call is allowed.
    """

    def __init__(self, message: str, *, service: str = "", retry_after: float = 0.0) -> None:
        self.retry_after = retry_after
        super().__init__(message, service=service)


class ServiceTimeout(ServiceError):
    """The service gave no answer within the call's time budget (retries included)."""


class EventError(DjscaleError):
    """An event could not be published or consumed."""


class InefficientQueries(DjscaleError):
    """A request, task or test ran queries that the project's query policy forbids."""


class NPlusOneDetected(InefficientQueries):
    """The same query shape ran again and again from one line (lazy loading in a loop).

    ``finding`` is the :class:`djscale.queries.Finding` (model, field, call site, count).
    """

    finding: object = None


class QueryBudgetExceeded(InefficientQueries):
    """A view, task or test ran more queries than its budget allows.

    ``queries`` lists the recorded queries (``[alias] SQL`` each).
    """

    queries: tuple[str, ...] = ()


class CacheError(DjscaleError):
    """The tiered cache cannot do what was asked."""


class CacheUnavailable(CacheError):
    """Redis (L2) is unreachable for an operation that cannot run on L1 alone (incr)."""


class CacheKeyError(CacheError, TypeError):
    """An argument of a ``@cached`` call cannot be encoded into a stable cache key."""


class PurgeError(DjscaleError):
    """The edge cache (Varnish, a CDN) refused a purge or could not be reached."""
