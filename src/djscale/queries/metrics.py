"""Prometheus counters of the query inspector (labels are bounded: code, not data)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["N_PLUS_ONE", "QUERY_BUDGET_EXCEEDED"]

N_PLUS_ONE = Counter(
    "djscale_n_plus_one_total",
    "Inspected requests/tasks in which one line ran the same query shape THRESHOLD+ times.",
    ["relation", "where"],
)
QUERY_BUDGET_EXCEEDED = Counter(
    "djscale_query_budget_exceeded_total",
    "Requests/tasks/views that ran more queries than their budget.",
    ["where"],
)
