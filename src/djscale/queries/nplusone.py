"""N+1 detection: the same query shape run again and again from one line of code.

:class:`NPlusOneDetector` is a :class:`~djscale.queries.recorder.QueryRecorder` that
groups SELECTs by (shape, call site). A group that reaches ``THRESHOLD`` queries is an
N+1: in ``raise`` mode :class:`~djscale.errors.NPlusOneDetected` is raised right there
(before the query runs, so the traceback points at the loop); in ``log`` mode every
group is reported once when the scope ends (:meth:`NPlusOneDetector.report`): a warning
on the ``djscale.queries`` logger and ``djscale_n_plus_one_total``.

Queries run inside :func:`allow_n_plus_one` are never counted. Groups span database
aliases: a lazy loop whose queries the router spreads over two replicas is still one loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ContextDecorator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from djscale import metrics
from djscale.errors import NPlusOneDetected
from djscale.queries.config import Mode
from djscale.queries.recorder import CallSite, ExecutedQuery, QueryRecorder, _allowed
from djscale.queries.relations import Relation, relation_from_sql
from djscale.queries.shape import first_filter, is_select, shape

__all__ = ["Finding", "NPlusOneDetector", "allow_n_plus_one"]

logger = logging.getLogger("djscale.queries")

F = TypeVar("F", bound=Callable[..., Any])


class allow_n_plus_one(ContextDecorator):  # lower case: reads like contextlib helpers
    """Mark a deliberate loop of queries: nothing inside is counted as an N+1.

    Use as ``with allow_n_plus_one():`` or as a decorator ``@allow_n_plus_one()``. Query
    budgets still count these queries.
    """

    def __init__(self) -> None:
        self._tokens: list[Any] = []

    def _recreate_cm(self) -> allow_n_plus_one:
        return allow_n_plus_one()  # a fresh token holder per call: re-entrant, thread-safe

    def __enter__(self) -> allow_n_plus_one:
        self._tokens.append(_allowed.set(True))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _allowed.reset(self._tokens.pop())


@dataclass
class Finding:
    """One N+1: ``relation`` loaded ``count`` times from ``site``."""

    shape: str
    site: CallSite | None
    relation: Relation | None
    count: int = 0
    aliases: set[str] = field(default_factory=set)
    sql: str = ""

    @property
    def model(self) -> str:
        """Model name (``Book``) or ``?`` when the query maps to no model."""
        return self.relation.model if self.relation else "?"

    @property
    def field(self) -> str:
        """Field or accessor name (``author``, ``book_set``) or ``?``."""
        return self.relation.field if self.relation else "?"

    def describe(self, where: str = "") -> str:
        """One paragraph saying what, where, how often, and the fix."""
        if self.relation is None:
            what = "the same query run"
        else:
            what = f"{self.relation} {'loaded lazily' if self.relation.lazy else 'queried'}"
        text = (f"N+1 queries: {what} {self.count} times from {self.site or 'unknown code'}"
                f" on {', '.join(sorted(self.aliases))}")
        if where:
            text += f" [{where}]"
        if self.relation:
            text += f"; load it up front: {self.relation.hint}"
        text += (". Wrap the loop in djscale.queries.allow_n_plus_one() if it is deliberate."
                 f"\n  query shape: {self.shape}")
        return text


class NPlusOneDetector(QueryRecorder):
    """Group SELECTs by (shape, call site); raise or report groups reaching ``threshold``."""

    def __init__(self, *, mode: Mode = "raise", threshold: int = 3, where: str = "",
                 label: str = "", keep: int = 500, ignore_paths: tuple[str, ...] = ()) -> None:
        super().__init__(inspect=mode != "off", keep=keep, ignore_paths=ignore_paths)
        self.mode = mode
        self.threshold = threshold
        self.where = where
        self.label = label
        """Bounded metric label (URL name, task name); ``where`` is for people."""
        self.groups: dict[tuple[str, CallSite | None], Finding] = {}

    def record(self, query: ExecutedQuery) -> None:
        """Count ``query`` in its group; in raise mode, raise when the group hits the limit."""
        super().record(query)
        if self.mode == "off" or query.allowed or not is_select(query.sql):
            return
        key_shape = shape(query.sql)
        key = (key_shape, query.site)
        finding = self.groups.get(key)
        if finding is None:
            relation = query.relation
            if relation is None:
                flt = first_filter(query.sql)
                relation = relation_from_sql(flt) if flt else None
            finding = self.groups[key] = Finding(key_shape, query.site, relation, sql=query.sql)
        finding.count += 1
        finding.aliases.add(query.alias)
        if self.mode == "raise" and finding.count == self.threshold:
            error = NPlusOneDetected(finding.describe(self.where))
            error.finding = finding
            raise error

    def findings(self) -> list[Finding]:
        """Groups that reached the threshold, most repeated first."""
        found = [f for f in self.groups.values() if f.count >= self.threshold]
        return sorted(found, key=lambda f: -f.count)

    def report(self) -> list[Finding]:
        """Log every finding and count it in the metric (``log`` mode); return them."""
        found = self.findings()
        if self.mode == "log":
            for finding in found:
                logger.warning("%s", finding.describe(self.where))
                metrics.record_n_plus_one(relation=str(finding.relation or "?"),
                                          where=self.label or self.where or "?")
        return found
