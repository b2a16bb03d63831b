"""Record the queries a scope (request, task, test, block) runs, on every database alias.

One execute wrapper (:meth:`django.db.backends.base.base.BaseDatabaseWrapper.execute_wrapper`)
is installed on each connection; it does nothing unless a :class:`QueryRecorder` is active
in the current context (a ``contextvars`` stack, so it works per thread, in async code and
in Celery tasks). A routed query is recorded with the alias it actually ran on.

Recorders with ``inspect=True`` also get each query's *call site*: the first stack frame
outside Django, djscale, the standard library and installed packages, i.e. the line of
the project to fix; and the relation a Django descriptor on the stack was loading.

This module records; :mod:`djscale.queries.nplusone` and :mod:`djscale.queries.budget`
judge.
"""

from __future__ import annotations

import contextvars
import os
import site
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from djscale.queries.relations import Relation, relation_from_frame

__all__ = ["CallSite", "ExecutedQuery", "QueryRecorder", "allowed", "install", "record_queries"]

_active: contextvars.ContextVar[tuple[QueryRecorder, ...]] = contextvars.ContextVar(
    "djscale_query_recorders", default=())
_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "djscale_n_plus_one_allowed", default=False)


@dataclass(frozen=True, slots=True)
class CallSite:
    """A line of project code."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        name = self.filename
        cwd = os.getcwd() + os.sep
        if name.startswith(cwd):
            name = name[len(cwd):]
        return f"{name}:{self.lineno} (in {self.function})"


@dataclass(frozen=True, slots=True)
class ExecutedQuery:
    """One statement sent to a database."""

    alias: str
    sql: str
    many: bool = False
    site: CallSite | None = None
    relation: Relation | None = None
    allowed: bool = False

    def __str__(self) -> str:
        return f"[{self.alias}] {self.sql}"


class QueryRecorder:
    """Count every query of a scope and keep the first ``keep`` of them.

    Use as a context manager (or :func:`record_queries`). Subclasses override
    :meth:`record` to judge queries as they run.
    """

    def __init__(self, *, inspect: bool = False, keep: int = 500,
                 ignore_paths: tuple[str, ...] = ()) -> None:
        self.inspect = inspect
        self.keep = keep
        self.ignore_paths = ignore_paths
        self.count = 0
        self.queries: list[ExecutedQuery] = []
        self.per_alias: Counter[str] = Counter()
        self._token: contextvars.Token[tuple[QueryRecorder, ...]] | None = None

    def __len__(self) -> int:
        return self.count

    def record(self, query: ExecutedQuery) -> None:
        """Called before ``query`` runs; may raise to stop it."""
        self.count += 1
        self.per_alias[query.alias] += 1
        if len(self.queries) < self.keep:
            self.queries.append(query)

    def __enter__(self) -> Self:
        install()
        self._token = _active.set((*_active.get(), self))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            try:
                _active.reset(self._token)
            except ValueError:  # stopped from another context (e.g. a Celery signal)
                _active.set(tuple(r for r in _active.get() if r is not self))
            self._token = None

    def start(self) -> None:
        """Activate without a ``with`` block (Celery signal handlers); see :meth:`stop`."""
        self.__enter__()

    def stop(self) -> None:
        """Deactivate after :meth:`start`."""
        self.__exit__(None, None, None)

    def listing(self, limit: int = 200) -> str:
        """The recorded queries, one per line, numbered, with their alias."""
        lines = [f"  {i}. {q}" for i, q in enumerate(self.queries[:limit], 1)]
        if self.count > len(lines):
            lines.append(f"  ... and {self.count - len(lines)} more")
        return "\n".join(lines)


@contextmanager
def record_queries(*, inspect: bool = False) -> Iterator[QueryRecorder]:
    """Record the queries run inside the block, on every alias."""
    with QueryRecorder(inspect=inspect) as recorder:
        yield recorder


@contextmanager
def _allow() -> Iterator[None]:
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


def allowed() -> bool:
    """True inside :func:`djscale.queries.allow_n_plus_one`."""
    return _allowed.get()


# ------------------------------------------------------------------ call sites

_skip: tuple[str, ...] | None = None


def _skip_prefixes() -> tuple[str, ...]:
    global _skip
    if _skip is None:
        import django

        import djscale

        paths = {os.path.dirname(django.__file__), os.path.dirname(djscale.__file__)}
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            paths.add(sysconfig.get_paths()[key])
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
        # Both spellings: frames carry the path as imported, which may be a symlink.
        _skip = tuple({q + os.sep for p in paths if p
                       for q in (os.path.abspath(p), os.path.realpath(p))})
    return _skip


def _call_site(ignore: tuple[str, ...]) -> tuple[CallSite | None, Relation | None]:
    skip = _skip_prefixes() + ignore
    frame = sys._getframe(2)
    relation: Relation | None = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(skip) or filename.startswith("<"):
            if relation is None and filename.endswith("related_descriptors.py"):
                relation = relation_from_frame(frame)
            frame = frame.f_back  # type: ignore[assignment]
            continue
        return CallSite(filename, frame.f_lineno, frame.f_code.co_name), relation
    return None, relation


# ------------------------------------------------------------------ the wrapper


def _execute_wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                     context: dict[str, Any]) -> Any:
    active = _active.get()
    if active:
        site_: CallSite | None = None
        relation: Relation | None = None
        inspecting = [r for r in active if r.inspect]
        if inspecting:
            site_, relation = _call_site(inspecting[0].ignore_paths)
        query = ExecutedQuery(alias=context["connection"].alias, sql=sql, many=many,
                              site=site_, relation=relation, allowed=_allowed.get())
        for recorder in active:
            recorder.record(query)
    return execute(sql, params, many, context)


def _install_on(connection: BaseDatabaseWrapper) -> None:
    if _execute_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(_execute_wrapper)


def _on_connection_created(sender: object, connection: BaseDatabaseWrapper,
                           **kwargs: Any) -> None:
    _install_on(connection)


def install() -> None:
    """Install the wrapper on this thread's connections and on every new connection."""
    connection_created.connect(_on_connection_created, dispatch_uid="djscale.queries")
    for conn in connections.all():
        _install_on(conn)


# Connections opened from now on (in any thread) get the wrapper without waiting for a
# recorder to be entered in their thread (ASGI's sync thread, pools of worker threads).
connection_created.connect(_on_connection_created, dispatch_uid="djscale.queries")
