"""Connecting to a multi-host alias (a Patroni group's): try the hosts that answer first.

libpq (and psycopg) try the hosts of ``HOST="h1,h2,h3"`` in order, each for up to
``connect_timeout`` (at least 2 s). A host that refuses (its PostgreSQL is down) or says
"read-only" costs a millisecond; a host whose machine is cut off drops the packets and
costs the whole ``connect_timeout``, on every connect, for as long as the cut lasts, and
it is often the first host: the old leader. This module remembers, per process, the hosts
whose connect timed out and tries them last for :data:`SLOW_SECONDS`; everything else
keeps the configured order (replica aliases rely on it to spread over the standbys).

Used by :mod:`djscale.db.deadline` for every connect of the app (Django's
``get_new_connection``) and for its re-check of a silent alias.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["SLOW_SECONDS", "connect", "note_timeouts", "ordered", "slow_hosts"]

SLOW_SECONDS = 30.0
"""How long a host whose connect timed out is tried last."""

T = TypeVar("T")

_clock = time.monotonic
_lock = threading.Lock()
_slow: dict[tuple[str, str], float] = {}

_TIMEOUT_RE = re.compile(r'connection to server at "([^"]+)"(?: \(([^)]*)\))?, port (\d+) '
                         r"failed: timeout expired")


def _pairs(params: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    hosts = [h.strip() for h in str(params.get("host") or "").split(",")]
    if len(hosts) < 2:
        return None
    ports = [p.strip() for p in str(params.get("port") or "").split(",")]
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        return None
    return list(zip(hosts, ports, strict=True))


def slow_hosts() -> set[tuple[str, str]]:
    """``(host, port)`` pairs tried last right now."""
    now = _clock()
    with _lock:
        return {hp for hp, until in _slow.items() if until > now}


def _mark(pairs: list[tuple[str, str]]) -> None:
    until = _clock() + SLOW_SECONDS
    with _lock:
        for pair in pairs:
            _slow[pair] = until


def ordered(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (libpq keywords) with recently timed-out hosts moved to the end."""
    pairs = _pairs(params)
    if pairs is None:
        return dict(params)
    slow = slow_hosts()
    order = [p for p in pairs if p not in slow] + [p for p in pairs if p in slow]
    if order == pairs:
        return dict(params)
    return {**params, "host": ",".join(h for h, _ in order),
            "port": ",".join(p for _, p in order)}


def note_timeouts(params: Mapping[str, Any], error: BaseException) -> None:
    """Remember the hosts of ``params`` that ``error`` (a failed connect) says timed out."""
    pairs = _pairs(params)
    if pairs is None:
        return
    found = []
    for m in _TIMEOUT_RE.finditer(str(error)):
        names, port = {m.group(1), m.group(2) or ""}, m.group(3)
        found += [p for p in pairs if p[1] == port and p[0] in names]
    _mark(found)


def connect(open_: Callable[[dict[str, Any]], T], params: Mapping[str, Any], *,
            per_host: float = 2.0) -> T:
    """``open_(params)`` over the hosts in :func:`ordered` order; learn which were slow.

    A failed connect names the hosts that timed out. A connect that succeeded only after
    ``per_host`` seconds waited out the hosts before the one it reached (``info.host`` /
    ``info.port`` of a psycopg connection, or of Django's wrapper around one).
    """
    attempt = ordered(params)
    started = _clock()
    try:
        conn = open_(attempt)
    except Exception as exc:
        note_timeouts(attempt, exc)
        raise
    pairs = _pairs(attempt)
    if pairs is not None and _clock() - started >= per_host * 0.9:
        info = getattr(conn, "info", None)
        reached = (str(getattr(info, "host", "")), str(getattr(info, "port", "")))
        if reached in pairs:
            _mark(pairs[:pairs.index(reached)])
    return conn
