"""Query budgets: at most N queries for a view, a task, a block or a test.

:func:`max_queries` decorates a view (function or ``as_view()``); the budget can also be
set on a URL (``path(..., {"max_queries": 10})``) or by URL name in
``DJSCALE["QUERIES"]["BUDGETS"]``, both enforced by
:class:`~djscale.queries.middleware.QueryInspectionMiddleware`. Queries count on every
alias they ran on (primary, replicas, shards). What an exceeded budget does is the
``BUDGET`` mode: ``raise`` :class:`~djscale.errors.QueryBudgetExceeded` listing every
query, ``log`` (warning + ``djscale_query_budget_exceeded_total``), or ``off``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from djscale import metrics
from djscale.errors import ConfigurationError, QueryBudgetExceeded
from djscale.queries.config import Mode, query_config
from djscale.queries.recorder import QueryRecorder

__all__ = ["QueryBudget", "budget_message", "enforce", "max_queries"]

logger = logging.getLogger("djscale.queries")

F = TypeVar("F", bound=Callable[..., Any])


def budget_message(limit: int, recorder: QueryRecorder, where: str = "") -> str:
    """``where: 12 queries, budget 10 (default 2, default_replica1 10):`` + the queries."""
    aliases = ", ".join(f"{a} {n}" for a, n in sorted(recorder.per_alias.items()))
    head = f"{where + ': ' if where else ''}{recorder.count} queries, budget {limit}"
    return f"{head} ({aliases}):\n{recorder.listing()}"


class QueryBudget(QueryRecorder):
    """Count queries; :meth:`check` raises or logs when more than ``limit`` ran."""

    def __init__(self, limit: int, *, mode: Mode = "raise", where: str = "") -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigurationError(f"max_queries={limit!r} is invalid: expected an "
                                     "integer >= 0")
        super().__init__()
        self.limit = limit
        self.mode = mode
        self.where = where

    @property
    def exceeded(self) -> bool:
        """True when more than ``limit`` queries ran."""
        return self.count > self.limit

    def check(self) -> None:
        """Act on an exceeded budget according to ``mode``."""
        enforce(self.limit, self, mode=self.mode, where=self.where)


def enforce(limit: int, recorder: QueryRecorder, *, mode: Mode, where: str,
            label: str = "") -> bool:
    """Raise or log when ``recorder`` counted more than ``limit``; return True if it did."""
    if recorder.count <= limit or mode == "off":
        return recorder.count > limit
    message = budget_message(limit, recorder, where)
    if mode == "raise":
        error = QueryBudgetExceeded(message)
        error.queries = tuple(str(q) for q in recorder.queries)
        raise error
    logger.warning("query budget exceeded: %s", message)
    metrics.record_query_budget_exceeded(where=label or where or "?")
    return True


def max_queries(limit: int) -> Callable[[F], F]:
    """Decorate a view so that it may run at most ``limit`` queries (all aliases)."""
    QueryBudget(limit)  # validate now, at import time of the view module

    def decorate(view: F) -> F:
        where = f"{view.__module__}.{getattr(view, '__qualname__', view.__class__.__name__)}"

        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapped(*args: Any, **kwargs: Any) -> Any:
                budget = QueryBudget(limit, mode=query_config().budget, where=where)
                with budget:
                    response = await view(*args, **kwargs)
                budget.check()
                return response

            async_wrapped.djscale_max_queries = limit  # type: ignore[attr-defined]
            return cast(F, async_wrapped)

        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            budget = QueryBudget(limit, mode=query_config().budget, where=where)
            with budget:
                response = view(*args, **kwargs)
            budget.check()
            return response

        wrapped.djscale_max_queries = limit  # type: ignore[attr-defined]
        return cast(F, wrapped)

    return decorate
