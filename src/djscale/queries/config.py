"""The query policy read from ``settings.DJSCALE["QUERIES"]``.

Owns the defaults and the validation of the query settings, nothing else::

    DJSCALE["QUERIES"] = {
        "N_PLUS_ONE": "log",        # "raise" | "log" | "off"  (default: raise if DEBUG)
        "BUDGET": "log",            # what an exceeded budget does (same choices)
        "THRESHOLD": 3,             # same shape from one line this many times = N+1
        "SAMPLE_RATE": 0.1,         # share of requests/tasks inspected for N+1
        "BUDGETS": {"shop:product-list": 10},   # URL name -> max queries
        "IGNORE_PATHS": [],         # more path prefixes skipped when finding the call site
    }

A bad value raises :class:`~djscale.errors.ConfigurationError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings

from djscale.errors import ConfigurationError

__all__ = ["MODES", "Mode", "QueryConfig", "query_config"]

Mode = Literal["raise", "log", "off"]
MODES: tuple[Mode, ...] = ("raise", "log", "off")


@dataclass(frozen=True)
class QueryConfig:
    """Validated query policy."""

    n_plus_one: Mode = "log"
    budget: Mode = "log"
    threshold: int = 3
    sample_rate: float = 0.1
    budgets: Mapping[str, int] = field(default_factory=dict)
    ignore_paths: tuple[str, ...] = ()
    max_recorded: int = 500


def _mode(raw: Mapping[str, Any], key: str, default: Mode) -> Mode:
    value = raw.get(key, default)
    if value not in MODES:
        raise ConfigurationError(
            f'DJSCALE["QUERIES"]["{key}"] = {value!r} is invalid: expected one of '
            + ", ".join(repr(m) for m in MODES))
    mode: Mode = value
    return mode


def query_config() -> QueryConfig:
    """The current query policy (read on each call, so ``override_settings`` works)."""
    raw = getattr(settings, "DJSCALE", {}).get("QUERIES", {}) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f'DJSCALE["QUERIES"] = {raw!r} is invalid: expected a dict')
    default: Mode = "raise" if settings.DEBUG else "log"
    n_plus_one = _mode(raw, "N_PLUS_ONE", default)
    threshold = raw.get("THRESHOLD", 3)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        raise ConfigurationError(
            f'DJSCALE["QUERIES"]["THRESHOLD"] = {threshold!r} is invalid: expected an '
            "integer >= 2")
    rate = raw.get("SAMPLE_RATE", 1.0 if n_plus_one == "raise" else 0.1)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigurationError(
            f'DJSCALE["QUERIES"]["SAMPLE_RATE"] = {rate!r} is invalid: expected a number '
            "between 0 and 1")
    budgets = raw.get("BUDGETS", {})
    if not isinstance(budgets, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in budgets.items()):
        raise ConfigurationError(
            f'DJSCALE["QUERIES"]["BUDGETS"] = {budgets!r} is invalid: expected a dict of '
            "URL name -> integer >= 0")
    ignore = raw.get("IGNORE_PATHS", [])
    if not isinstance(ignore, list | tuple) or not all(isinstance(p, str) for p in ignore):
        raise ConfigurationError(
            f'DJSCALE["QUERIES"]["IGNORE_PATHS"] = {ignore!r} is invalid: expected a list '
            "of path prefixes")
    return QueryConfig(
        n_plus_one=n_plus_one,
        budget=_mode(raw, "BUDGET", default),
        threshold=threshold,
        sample_rate=float(rate),
        budgets=dict(budgets),
        ignore_paths=tuple(ignore),
    )
