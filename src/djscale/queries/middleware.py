"""Per-request query inspection: N+1 detection (sampled) and URL query budgets.

Add near the top of ``MIDDLEWARE`` (it counts what runs below it)::

    MIDDLEWARE = ["djscale.queries.QueryInspectionMiddleware", ...]

Every request is counted (cheap); a ``SAMPLE_RATE`` share is inspected for N+1 queries
(call sites cost a stack walk per query). Budgets come from ``path(...,
{"max_queries": N})`` (the keyword is removed before the view is called) or from
``DJSCALE["QUERIES"]["BUDGETS"][url_name]``; a view decorated with
:func:`~djscale.queries.max_queries` enforces its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from djscale.queries.budget import enforce
from djscale.queries.config import query_config
from djscale.queries.nplusone import NPlusOneDetector

__all__ = ["QueryInspectionMiddleware"]


class QueryInspectionMiddleware:
    """Detect N+1 queries and enforce query budgets per request."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Run the request under a recorder; report N+1s and check the budget after it."""
        config = query_config()
        sampled = config.n_plus_one != "off" and random.random() < config.sample_rate
        detector = NPlusOneDetector(
            mode=config.n_plus_one if sampled else "off", threshold=config.threshold,
            where=f"{request.method} {request.path}", keep=config.max_recorded,
            ignore_paths=config.ignore_paths)
        with detector:
            response = self.get_response(request)
        match = request.resolver_match
        label = match.view_name if match is not None else "unresolved"
        detector.where = f"{request.method} {request.path} ({label})"
        detector.label = label
        detector.report()
        limit: int | None = getattr(request, "_djscale_max_queries", None)
        if limit is not None:
            enforce(limit, detector, mode=config.budget, where=detector.where, label=label)
        return response

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any],
                     view_args: tuple[Any, ...], view_kwargs: dict[str, Any]) -> None:
        """Pick the request's budget: URL keyword, then settings by URL name."""
        limit = view_kwargs.pop("max_queries", None)
        if hasattr(view_func, "djscale_max_queries"):
            return None  # the decorator enforces its own budget
        if limit is None and request.resolver_match is not None:
            limit = query_config().budgets.get(request.resolver_match.view_name)
        request._djscale_max_queries = limit  # type: ignore[attr-defined]
        return None
