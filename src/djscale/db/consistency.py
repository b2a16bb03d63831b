"""Read-your-writes state of the current request or task, held in ``contextvars``.

Owns :class:`ConsistencyState` (per replication group: "has written since the last
capture" and the LSN token a replica must have replayed), the signed token format that
carries it across requests (cookie, header) and into Celery tasks, and the explicit
overrides :func:`use_primary` / :func:`use_replica`.

Two kinds of state:

- a *scope* (:func:`scope`, opened by :class:`~djscale.db.middleware.ReplicaMiddleware`
  per request and by the Celery signal handlers per task) is *sticky*: once a group is
  written, the rest of the scope reads it from the primary; at the end of the scope the
  primary's ``pg_current_wal_insert_lsn()`` becomes the token sent back to the client;
- outside any scope (shell, scripts, tests), a write is turned into a token at the next
  read of that group (one query on the primary), so a long-running script is not pinned
  to the primary forever yet still reads its own writes.

Everything lives in ``contextvars``, so it is per thread, per asyncio task, and copied
into ``sync_to_async``/``async_to_sync`` calls. This module must not choose replicas
(:mod:`djscale.db.replicas` does).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from django.core import signing
from django.db import DatabaseError, connections

from djscale.db.config import GroupConfig
from djscale.db.probe import format_lsn, parse_lsn

__all__ = [
    "ConsistencyState",
    "begin",
    "capture",
    "current",
    "decode_tokens",
    "encode_tokens",
    "end",
    "finish",
    "forced",
    "handoff_tokens",
    "peek",
    "reconcile",
    "scope",
    "use_primary",
    "use_replica",
]

log = logging.getLogger("djscale.db.consistency")

SALT = "djscale.db.consistency"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class ConsistencyState:
    """What the current request/task has written and which WAL positions it must see."""

    tokens: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    sticky: bool = False
    changed: bool = False

    def merge(self, tokens: Mapping[str, int]) -> None:
        """Require at least these WAL positions (per group) from now on."""
        for group, lsn in tokens.items():
            if lsn > self.tokens.get(group, -1):
                self.tokens[group] = lsn
                self.changed = True


_state: ContextVar[ConsistencyState | None] = ContextVar("djscale_consistency", default=None)
_forced: ContextVar[str | None] = ContextVar("djscale_forced", default=None)


def current() -> ConsistencyState:
    """The state of this context (an unscoped one is created on first use)."""
    state = _state.get()
    if state is None:
        state = ConsistencyState()
        _state.set(state)
    return state


def peek() -> ConsistencyState | None:
    """The state of this context, or None when nothing was recorded yet."""
    return _state.get()


def forced() -> str | None:
    """``"primary"`` or ``"replica"`` inside use_primary()/use_replica(), else None."""
    return _forced.get()


@contextlib.contextmanager
def scope(tokens: Mapping[str, int] | None = None) -> Iterator[ConsistencyState]:
    """A sticky state for one request or task, starting from ``tokens``."""
    state = ConsistencyState(tokens=dict(tokens or {}), sticky=True)
    reset = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(reset)


def begin(tokens: Mapping[str, int] | None = None) -> Token[ConsistencyState | None]:
    """Open a sticky scope without a ``with`` block (Celery's prerun/postrun signals)."""
    return _state.set(ConsistencyState(tokens=dict(tokens or {}), sticky=True))


def end(reset: Token[ConsistencyState | None]) -> None:
    """Close a scope opened by :func:`begin`."""
    _state.reset(reset)


def handoff_tokens() -> dict[str, int]:
    """Tokens to give work started now (a Celery task): this context's, with its writes.

    Writes not yet captured are captured without changing this context's own state.
    """
    state = _state.get()
    if state is None:
        return {}
    copy = ConsistencyState(tokens=dict(state.tokens), dirty=set(state.dirty))
    finish(copy)
    return copy.tokens


# ---------------------------------------------------------------------- LSN capture


def capture(group: GroupConfig, state: ConsistencyState) -> int | None:
    """Turn "group was written" into a token: the primary's current insert LSN.

    Returns the LSN, or None when the primary could not be asked (logged; the state
    keeps the group dirty so this scope still reads it from the primary).
    """
    conn = connections[group.primary]
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = cursor.fetchone()
    except DatabaseError as exc:
        log.warning("could not read the WAL position of %s after a write: %s",
                    group.primary, exc)
        return None
    if not row:
        return None
    lsn = parse_lsn(row[0])
    state.dirty.discard(group.name)
    state.merge({group.name: lsn})
    return lsn


def reconcile(group: GroupConfig, state: ConsistencyState) -> int | None:
    """Lower this state's token of ``group`` to the primary's WAL position when it is ahead.

    A primary's WAL position only grows, except across a failover: the promoted replica
    starts a new timeline from the position it had replayed, which may be behind a token
    the old primary issued (an asynchronous failover lost the tail of its WAL, or the
    token's insert position ran ahead of the last commit that reached the standby). No
    server would ever reach such a token: the user would read from the primary until the
    new timeline passed it, or the token expired. Called when no replica has replayed a
    token (the read goes to the primary anyway), it costs one query on the primary there.

    Returns the lowered token, or None when the token stands (or the primary cannot be
    asked: the read then simply goes to the primary, nothing raises).
    """
    token = state.tokens.get(group.name)
    if token is None:
        return None
    try:
        with connections[group.primary].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = cursor.fetchone()
    except DatabaseError:
        return None
    if not row:
        return None
    position = parse_lsn(row[0])
    if position >= token:
        return None
    log.warning("read-your-writes token %s of group %s is ahead of its primary's WAL (%s): "
                "the primary changed (failover); lowering the token to it",
                format_lsn(token), group.name, format_lsn(position))
    state.tokens[group.name] = position
    state.changed = True
    return position


def finish(state: ConsistencyState) -> None:
    """End of a scope: capture a token for every group it wrote (outside transactions)."""
    from djscale.db import config

    for name in sorted(state.dirty):
        try:
            group = config.group(name)
        except Exception:  # noqa: BLE001 - settings changed under us; nothing to capture
            state.dirty.discard(name)
            continue
        conn = connections[group.primary]
        if conn.in_atomic_block:
            # Still inside a transaction: its commit is not in the WAL yet.
            continue
        if conn.errors_occurred and _broken(conn.connection):
            # The primary just failed under this request: asking it again would only add
            # a connect timeout to the error response.
            log.warning("not reading the WAL position of %s: its connection failed",
                        group.primary)
            continue
        capture(group, state)


def _broken(raw: Any) -> bool:
    return raw is None or bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


# ---------------------------------------------------------------------- token format


def encode_tokens(tokens: Mapping[str, int]) -> str:
    """Sign ``{group: lsn}`` for a cookie, a header or a task header."""
    return signing.dumps({g: format_lsn(lsn) for g, lsn in sorted(tokens.items())},
                         salt=SALT, compress=True)


def decode_tokens(value: str | None, *, max_age: int | None = None) -> dict[str, int]:
    """The ``{group: lsn}`` of a signed value; ``{}`` when missing, forged, expired or bad."""
    if not value:
        return {}
    try:
        raw = signing.loads(value, salt=SALT, max_age=max_age)
    except signing.BadSignature:  # includes SignatureExpired
        return {}
    except Exception:  # noqa: BLE001 - garbage from a client must never fail a request
        return {}
    if not isinstance(raw, dict):
        return {}
    tokens: dict[str, int] = {}
    for group, text in raw.items():
        if isinstance(group, str) and isinstance(text, str):
            try:
                tokens[group] = parse_lsn(text)
            except ValueError:
                continue
    return tokens


# ---------------------------------------------------------------------- overrides


class _Force:
    """Context manager (sync and async) that forces where reads go."""

    def __init__(self, mode: Literal["primary", "replica"]) -> None:
        self.mode = mode
        self._resets: list[Token[str | None]] = []

    def __enter__(self) -> _Force:
        self._resets.append(_forced.set(self.mode))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _forced.reset(self._resets.pop())

    async def __aenter__(self) -> _Force:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _decorate(mode: Literal["primary", "replica"],
              func: Callable[P, R]) -> Callable[P, R]:
    if inspect.iscoroutinefunction(func):
        afunc: Callable[P, Awaitable[Any]] = func

        @functools.wraps(func)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            async with _Force(mode):
                return await afunc(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _Force(mode):
            return func(*args, **kwargs)

    return wrapper


@overload
def use_primary(func: None = None) -> _Force: ...
@overload
def use_primary(func: Callable[P, R]) -> Callable[P, R]: ...


def use_primary(func: Callable[P, R] | None = None) -> _Force | Callable[P, R]:
    """Send every read to the primary: ``with use_primary():``, ``async with``, or a decorator.

    Use it where a stale read would do harm (checking a balance before charging it).
    """
    if func is None:
        return _Force("primary")
    return _decorate("primary", func)


@overload
def use_replica(func: None = None) -> _Force: ...
@overload
def use_replica(func: Callable[P, R]) -> Callable[P, R]: ...


def use_replica(func: Callable[P, R] | None = None) -> _Force | Callable[P, R]:
    """Allow reads on replicas even after a write or inside a transaction.

    Read-your-writes is switched off inside; replicas must still be up and within
    ``max_lag`` (else reads fall back as usual). Use it for reports that tolerate
    slightly stale data and should keep load off the primary.
    """
    if func is None:
        return _Force("replica")
    return _decorate("replica", func)
