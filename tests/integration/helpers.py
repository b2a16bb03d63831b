"""Helpers the integration tests share: SQL on a cluster's servers, replication, HTTP.

Plain functions (fixtures live in ``conftest.py``). Every wait here waits on a condition
and says what it saw when it gives up; none sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from django.core.cache import caches

from djscale.cache import TieredCache
from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until

__all__ = [
    "Reply",
    "WrkReport",
    "connect",
    "frozen",
    "process_tree",
    "replay_paused",
    "replica_services",
    "request",
    "sql",
    "tiered",
    "wait_replayed",
    "wal_flushed",
    "wrk_load",
]


DEFAULT_SIGNALS = ["env", "--default-signal=HUP,INT"]
"""Prefix of a child's command that gets SIGHUP and SIGINT as signals, not ignored.

A suite started under ``nohup`` or as a background job of a script (``cmd &``) has them
ignored, and a child inherits that: it would never see the signal a test sends it.
"""


def connect(cluster: LocalCluster, service: str = "pg-default") -> psycopg.Connection[Any]:
    """An autocommit connection to a PostgreSQL service of ``cluster`` (its main database)."""
    host, port = cluster.address(service)
    pg = cluster.topology.postgres
    return psycopg.connect(host=host, port=port, user=pg.user, dbname=pg.database,
                           autocommit=True, connect_timeout=2)


def sql(cluster: LocalCluster, service: str, query: str,
        params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on ``service`` and return its rows (none for a statement)."""
    with connect(cluster, service) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def replica_services(cluster: LocalCluster) -> tuple[str, ...]:
    """The service names of the main group's replicas (``pg-default-replica1``, ...)."""
    return tuple(f"pg-{alias.replace('_', '-')}"
                 for alias in cluster.topology.postgres.replica_aliases)


def wal_flushed(cluster: LocalCluster, service: str = "pg-default") -> str:
    """The primary's flushed WAL position: what its replicas can receive and replay.

    Not ``pg_current_wal_insert_lsn()``: when the last record ends on a page boundary
    (after a WAL segment switch, for one) the insert position points past the next
    page's header, which no replica ever replays until something else is written.
    """
    ((lsn,),) = sql(cluster, service, "SELECT pg_current_wal_flush_lsn()::text")
    return str(lsn)


def wait_replayed(cluster: LocalCluster, replicas: Sequence[str] | None = None, *,
                  primary: str = "pg-default", timeout: float = 30) -> None:
    """Wait until ``replicas`` (default: all of the main group) replayed the primary's WAL."""
    target = wal_flushed(cluster, primary)
    for service in replicas if replicas is not None else replica_services(cluster):
        def replayed(service: str = service) -> bool:
            ((done,),) = sql(cluster, service,
                             "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
            return bool(done)

        if not wait_until(replayed, timeout=timeout, interval=0.05):
            seen = sql(cluster, service, "SELECT pg_last_wal_receive_lsn()::text, "
                       "pg_last_wal_replay_lsn()::text, pg_is_wal_replay_paused()")
            raise AssertionError(f"{service} did not replay {target} within {timeout} s "
                                 f"(received, replayed, paused: {seen})")


@contextlib.contextmanager
def replay_paused(cluster: LocalCluster,
                  replicas: Sequence[str] | None = None) -> Iterator[None]:
    """The replicas stop replaying WAL (they lag) until the block ends, even on failure."""
    services = replicas if replicas is not None else replica_services(cluster)
    conns = [connect(cluster, service) for service in services]
    try:
        for conn in conns:
            conn.execute("SELECT pg_wal_replay_pause()")
        yield
    finally:
        for conn in conns:
            with conn:
                conn.execute("SELECT pg_wal_replay_resume()")


class Reply(NamedTuple):
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (None when it is empty)."""
        return json.loads(self.body) if self.body else None


def request(cluster: LocalCluster, method: str, path: str, *, service: str = "lb",
            body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> Reply:
    """One HTTP request to ``service`` of ``cluster`` (``body``, if given, sent as JSON)."""
    host, port = cluster.address(service)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {"Host": "localhost", **(headers or {})}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=payload, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (a postmaster's backends are not in its group)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def frozen(cluster: LocalCluster, service: str) -> Iterator[None]:
    """SIGSTOP a service and its children (a hung server) until the block ends, then SIGCONT."""
    top = cluster.process(service).pid
    stopped = process_tree(top)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in {*stopped, *process_tree(top)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def tiered(alias: str = "default") -> TieredCache:
    """The cache ``alias`` of the test settings, which is a :class:`TieredCache`."""
    cache = caches[alias]
    assert isinstance(cache, TieredCache), f"CACHES[{alias!r}] is {type(cache).__name__}"
    return cache


class WrkReport(NamedTuple):
    """What one ``wrk`` run printed: requests, non-2xx/3xx answers and socket errors."""

    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    output: str

    @property
    def failed(self) -> int:
        """Requests that got no 2xx/3xx answer, connection errors included."""
        return self.non_2xx + sum(self.socket_errors.values())


@contextlib.contextmanager
def wrk_load(url: str, *, script: str = "", connections: int = 8,
             env: dict[str, str] | None = None,
             max_seconds: int = 300) -> Iterator[list[WrkReport]]:
    """Run ``wrk`` against ``url`` for the duration of the block; the list gets its report.

    wrk is stopped with SIGINT at the end of the block (it prints its totals then);
    ``max_seconds`` only bounds a block that never ends. wrk's ``--timeout`` is set to
    30 s, the load balancers' server timeout: wrk counts a slower answer as a "timeout"
    socket error although it still arrives, and on a shared 2-core machine an answer may
    take over wrk's default 2 s without anything having failed.
    """
    import re
    import shutil
    import subprocess

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (run `make setup`)")
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max_seconds}s", "--timeout", "30s",
           *(["-s", script] if script else []), url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    reports: list[WrkReport] = []
    try:
        yield reports
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        total = re.search(r"(\d+) requests in", out)
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                           r"timeout (\d+)", out)
        reports.append(WrkReport(
            requests=int(total.group(1)) if total else 0,
            non_2xx=int(non2xx.group(1)) if non2xx else 0,
            socket_errors=dict(zip(("connect", "read", "write", "timeout"),
                                   (int(g) for g in errors.groups()), strict=True))
            if errors else {},
            output=out))


def url_patterns(cluster: LocalCluster) -> list[str]:
    """Every URL pattern of the cluster's Django project, as paths (``/`` + the pattern)."""
    code = (
        "import json\n"
        "from django.urls import get_resolver, URLResolver\n"
        "def walk(patterns, prefix=''):\n"
        "    for p in patterns:\n"
        "        if isinstance(p, URLResolver):\n"
        "            yield from walk(p.url_patterns, prefix + str(p.pattern))\n"
        "        else:\n"
        "            yield prefix + str(p.pattern)\n"
        "print('URLS=' + json.dumps(sorted(set(walk(get_resolver().url_patterns)))))\n"
    )
    out = cluster.django_admin("shell", "-c", code, service="test-urls").splitlines()
    urls = json.loads(next(x for x in out if x.startswith("URLS="))[5:])
    return ["/" + u.lstrip("^").rstrip("$") for u in urls]


def logged_in_sessions(cluster: LocalCluster, *names: str) -> dict[str, str]:
    """Users ``names`` (created when missing), each logged in: name -> session key."""
    code = (
        "from importlib import import_module\n"
        "from django.conf import settings\n"
        "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, "
        "HASH_SESSION_KEY\n"
        f"for name in {list(names)!r}:\n"
        "    u, _ = get_user_model().objects.get_or_create(username=name)\n"
        "    s = import_module(settings.SESSION_ENGINE).SessionStore()\n"
        "    s[SESSION_KEY] = str(u.pk)\n"
        "    s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "    s[HASH_SESSION_KEY] = u.get_session_auth_hash()\n"
        "    s.save()\n"
        "    print('SESSION', name, s.session_key)\n"
    )
    out = cluster.django_admin("shell", "-c", code, service="test-sessions").splitlines()
    return {line.split()[1]: line.split()[2] for line in out if line.startswith("SESSION ")}
