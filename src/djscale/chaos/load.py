"""A bounded HTTP load generator that records every request's outcome over time.

Used by the chaos scenarios: it sends a fixed number of requests (or stops at a deadline)
from a few threads with keep-alive connections, and keeps, for each request, when it
started, how long it took and its status (0 for a connection error or timeout), so a
scenario can ask what happened *during* a fault window. Stdlib only, so that it runs
wherever djscale does.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Sample", "run_load"]


@dataclass(frozen=True)
class Sample:
    """One request: start time (monotonic), latency, status (0: no HTTP answer)."""

    started: float
    latency: float
    status: int
    method: str
    tag: str = ""
    """What the run's ``tag`` function read from the answer (e.g. the database that served
    it), or ``no answer: <exception>`` for a request that got none."""
    retried: str = ""
    """Why the request was sent a second time, on a new connection: ``""`` (it was not),
    ``stale connection`` or ``cut short`` (see :func:`run_load`)."""


@dataclass
class LoadResult:
    """Every request of one load run, in completion order."""

    samples: list[Sample] = field(default_factory=list)

    def failed(self, method: str | None = None, *, since: float = 0.0,
               until: float = float("inf")) -> list[Sample]:
        """Requests (of ``method``) started in [since, until) that got no 2xx/3xx answer."""
        return [s for s in self.window(since, until)
                if (method is None or s.method == method) and not 200 <= s.status < 400]

    def window(self, since: float, until: float) -> list[Sample]:
        """Requests started in [since, until)."""
        return [s for s in self.samples if since <= s.started < until]

    def retried(self) -> Counter[str]:
        """How many requests were sent a second time, by reason (:attr:`Sample.retried`)."""
        return Counter(s.retried for s in self.samples if s.retried)

    def statuses(self, method: str | None = None) -> Counter[int]:
        """How many requests (of ``method``) got each status."""
        return Counter(s.status for s in self.samples if method is None or s.method == method)

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        """99th percentile latency (seconds) of the requests started in [since, until)."""
        lat = sorted(s.latency for s in self.window(since, until))
        if not lat:
            return 0.0
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))]

    def ok(self, method: str) -> int:
        """How many ``method`` requests were answered with 2xx."""
        return sum(1 for s in self.samples if s.method == method and 200 <= s.status < 300)


def _worker(host: str, port: int, plan: Callable[[int], tuple[str, str]], counter: list[int],
            lock: threading.Lock, total: int, deadline: float, timeout: float,
            result: LoadResult, stop: threading.Event,
            tag: Callable[[str, bytes], str] | None) -> None:
    conn: http.client.HTTPConnection | None = None
    while True:
        with lock:
            n = counter[0]
            if n >= total or time.monotonic() >= deadline or stop.is_set():
                break
            counter[0] += 1
        method, path = plan(n)
        started = time.monotonic()
        status = 0
        retried = ""
        for attempt in (1, 2):
            reused = conn is not None
            label = ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request(method, path, body=b"" if method == "POST" else None,
                             headers={"Connection": "keep-alive"})
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if tag is not None and 200 <= status < 300:
                    label = tag(method, body)
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                # The report counts answers by tag: say what went wrong instead of "?".
                label = f"no answer: {type(exc).__name__}{' (reused)' if reused else ''}"
                why = _retry_reason(exc, reused=reused)
                if attempt == 2 or method not in ("GET", "HEAD") or not why:
                    break
                retried = why
        sample = Sample(started, time.monotonic() - started, status, method, label, retried)
        with lock:
            result.samples.append(sample)
    if conn is not None:
        conn.close()


def _retry_reason(exc: Exception, *, reused: bool) -> str:
    """Why an idempotent request that failed with ``exc`` may be sent once more, or ``""``.

    As HTTP clients do (RFC 9110, 9.2.2: an idempotent request may be repeated when the
    connection fails before its response could be read):

    - ``stale connection``: a *reused* keep-alive connection closed under the request
      (the server may close an idle or old one at any time; browsers and urllib3 retry);
    - ``cut short``: the answer ended before its ``Content-Length``. A server killed after
      it sent the head of an answer and before its body leaves the proxy nothing to retry:
      the head has already gone to the client (nginx logs "upstream prematurely closed
      connection while reading upstream"). urllib3's ``Retry(read=...)`` sends it again.

    A fresh connection that fails otherwise (refused, reset, timeout) is a failure.
    """
    if isinstance(exc, http.client.IncompleteRead):
        return "cut short"
    if reused and isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError
                             | BrokenPipeError):
        return "stale connection"
    return ""


def run_load(host: str, port: int, plan: Callable[[int], tuple[str, str]], *, requests: int,
             max_seconds: float, concurrency: int = 8, timeout: float = 10.0,
             stop: threading.Event | None = None,
             tag: Callable[[str, bytes], str] | None = None) -> LoadResult:
    """Send ``requests`` requests (``plan(i)`` -> (method, path)) from ``concurrency`` threads.

    ``tag(method, body)``, when given, labels each 2xx answer (:attr:`Sample.tag`). A GET or
    HEAD whose connection failed in the ways HTTP clients recover from is sent once more on
    a new connection, and says so (:attr:`Sample.retried`, :meth:`LoadResult.retried`).

    Stops after ``requests`` requests, at ``max_seconds``, or when ``stop`` is set,
    whichever comes first. Blocks until done; run it in a thread to inject faults meanwhile.
    """
    stop = stop or threading.Event()
    result = LoadResult()
    lock = threading.Lock()
    counter = [0]
    deadline = time.monotonic() + max_seconds
    threads = [threading.Thread(target=_worker, daemon=True, args=(
        host, port, plan, counter, lock, requests, deadline, timeout, result, stop, tag))
        for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + timeout + 5)
    return result
