"""Efficient queries as tools: N+1 detection and query budgets, per request and task.

- :class:`QueryInspectionMiddleware`: per request, N+1 detection (``raise`` / ``log`` +
  metric, sampled / ``off``) and URL budgets.
- :func:`allow_n_plus_one`: mark a deliberate loop.
- :func:`max_queries`: a view's query budget.
- :func:`record_queries`: record the queries of a block, on every alias.
- :mod:`djscale.queries.celery`: the same inspection for Celery tasks.
- :func:`djscale.testing.queries.assert_max_queries`: the pytest helper.

Settings: ``DJSCALE["QUERIES"]`` (see :mod:`djscale.conf`, checked as ``djscale.E110``). Guide:
``docs/queries.md``.
"""

from __future__ import annotations

from djscale.queries import celery as _celery
from djscale.queries.budget import QueryBudget, max_queries
from djscale.queries.config import QueryConfig, query_config
from djscale.queries.middleware import QueryInspectionMiddleware
from djscale.queries.nplusone import Finding, NPlusOneDetector, allow_n_plus_one
from djscale.queries.recorder import CallSite, ExecutedQuery, QueryRecorder, record_queries
from djscale.queries.relations import Relation

__all__ = [
    "CallSite",
    "ExecutedQuery",
    "Finding",
    "NPlusOneDetector",
    "QueryBudget",
    "QueryConfig",
    "QueryInspectionMiddleware",
    "QueryRecorder",
    "Relation",
    "allow_n_plus_one",
    "max_queries",
    "query_config",
    "record_queries",
]

_celery.install_if_loaded()
