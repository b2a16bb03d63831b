"""The local cluster's autoscaler: app servers follow the load (``[app] autoscale``).

Every ``interval`` seconds :class:`Sampler` measures the app servers from outside, the
way Prometheus and the Kubernetes HPA would:

- **latency**: each app server's ``/metrics`` (summed over its gunicorn workers) is
  scraped; the bucket counts that grew since the previous scrape, added over all servers,
  give the p95 of the requests of that window (interpolated inside its bucket, as PromQL's
  ``histogram_quantile`` does) and the request rate. The histogram is
  ``djscale_http_request_latency_seconds`` (from the load balancer's ``X-Request-Start``:
  the wait for a free worker included) when the requests carry that header, else
  ``djscale_http_request_duration_seconds`` (Django's own time). Only the first shows an
  overloaded sync-worker server: its requests wait in the listen backlog, before Django;
- **cpu**: the CPU time of each app server's process group (``/proc``) over the window,
  as a percentage of one core per gunicorn worker.

:class:`Policy` turns a measurement into a server count (see
:class:`~djscale.topology.AutoscaleSpec`): Kubernetes' ``ceil(servers * observed /
target)`` within a 10 % tolerance, between ``min`` and ``max``; up at once, down one server
at a time after ``cooldown`` seconds of low load, never two changes within ``cooldown``.
:class:`Autoscaler` applies the decision through :class:`~djscale.cluster.scale.AppPool`
(no request dropped) and keeps a trace of every measurement, which
``benchmarks/bench_autoscale.py`` plots.

Scaling runs while the cluster's reshaping lock is free (:func:`djscale.cluster.scale.reshaping`):
a rollout or ``cluster scale`` in progress makes the autoscaler wait, not fight it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from djscale.cluster.local import LocalCluster
from djscale.cluster.scale import AppPool, reshaping
from djscale.cluster.supervisor import group_members
from djscale.errors import ClusterError
from djscale.topology import AutoscaleSpec

__all__ = ["Autoscaler", "Measurement", "Policy", "Sampler", "TracePoint", "histogram_quantile",
           "run_autoscaler"]

HISTOGRAMS = ("djscale_http_request_latency_seconds", "djscale_http_request_duration_seconds")
"""Followed in this order: the first with requests in the window wins."""
TOLERANCE = 0.1
"""Kubernetes' default: no change while observed/target is within 10 % of 1."""


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound -> count), as PromQL does.

    None when there are no observations. A quantile in the ``+Inf`` bucket is the highest
    finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class Measurement:
    """One window of load over all app servers."""

    p95_ms: float | None
    """None when no request was answered in the window."""
    requests_per_second: float
    cpu_percent: float | None
    """Per gunicorn worker, in % of one core (None on the first window)."""

    def value(self, metric: str) -> float | None:
        """The measure ``metric`` (``latency`` or ``cpu``) follows."""
        return self.p95_ms if metric == "latency" else self.cpu_percent


@dataclass
class Policy:
    """Desired server count from a measurement (pure: the clock is passed in)."""

    spec: AutoscaleSpec
    last_change: float = -math.inf
    low_since: float | None = None

    def desired(self, now: float, current: int, observed: float | None) -> int:
        """How many servers to run, given ``current`` and the measure ``observed``.

        ``observed`` None means no traffic: as low as it gets.
        """
        spec = self.spec
        if current < spec.min or current > spec.max:
            return min(spec.max, max(spec.min, current))
        ratio = 0.0 if observed is None else observed / spec.target
        calm = now - self.last_change >= spec.cooldown
        if ratio > 1 + TOLERANCE:
            self.low_since = None
            if calm:
                return min(spec.max, max(current + 1, math.ceil(current * ratio)))
            return current
        if ratio < 1 - TOLERANCE and math.ceil(current * ratio) < current:
            if self.low_since is None:
                self.low_since = now
            if calm and now - self.low_since >= spec.cooldown and current > spec.min:
                return current - 1
            return current
        self.low_since = None
        return current

    def changed(self, now: float) -> None:
        """Note that the server count changed at ``now`` (starts the cool-down)."""
        self.last_change = now
        self.low_since = None


@dataclass
class _Delta:
    """What grew in one measurement window, over all servers."""

    at: float
    buckets: dict[str, dict[float, float]]
    counts: dict[str, float]
    ticks: float
    seconds: float
    servers: int


@dataclass
class _Scrape:
    buckets: dict[str, dict[float, float]]
    count: dict[str, float]
    cpu_ticks: float
    at: float


class Sampler:
    """Measure the app servers of ``cluster`` over successive windows."""

    def __init__(self, cluster: LocalCluster, *, workers: int, window: float = 0.0) -> None:
        self.cluster = cluster
        self.workers = workers
        self.window = window
        self._last: dict[str, _Scrape] = {}
        self._recent: list[_Delta] = []

    def measure(self) -> Measurement:
        """The load since the previous call (the first call only sets the baseline)."""
        scrapes = {}
        for name in self.cluster.app_servers():
            scrape = self._scrape(name)
            if scrape is not None:
                scrapes[name] = scrape
        merged: dict[str, dict[float, float]] = {h: {} for h in HISTOGRAMS}
        counts = dict.fromkeys(HISTOGRAMS, 0.0)
        ticks = seconds = 0.0
        servers = 0
        for name, now in scrapes.items():
            before = self._last.get(name)
            if before is None or any(now.count.get(h, 0.0) < before.count.get(h, 0.0)
                                     for h in HISTOGRAMS):
                continue  # new (or restarted) server: this scrape is its baseline
            for h in HISTOGRAMS:
                for bound, value in now.buckets.get(h, {}).items():
                    merged[h][bound] = (merged[h].get(bound, 0.0) + value
                                        - before.buckets.get(h, {}).get(bound, 0.0))
                counts[h] += now.count.get(h, 0.0) - before.count.get(h, 0.0)
            ticks += max(0.0, now.cpu_ticks - before.cpu_ticks)
            seconds = max(seconds, now.at - before.at)
            servers += 1
        self._last = scrapes
        now_at = time.monotonic()
        self._recent.append(_Delta(now_at, merged, counts, ticks, seconds, servers))
        # One figure covers the last `window` seconds: a p95 of a handful of requests
        # would follow single slow requests rather than the load.
        self._recent = [d for d in self._recent if now_at - d.at < max(self.window, 1e-9)]
        return self._combine(self._recent)

    def reset(self) -> None:
        """Forget the recent windows (the servers changed: measure the new shape only)."""
        self._recent = []

    def _combine(self, deltas: list[_Delta]) -> Measurement:
        merged: dict[str, dict[float, float]] = {h: {} for h in HISTOGRAMS}
        counts = dict.fromkeys(HISTOGRAMS, 0.0)
        ticks = seconds = 0.0
        worker_seconds = 0.0
        for d in deltas:
            for h in HISTOGRAMS:
                for bound, value in d.buckets[h].items():
                    merged[h][bound] = merged[h].get(bound, 0.0) + value
                counts[h] += d.counts[h]
            ticks += d.ticks
            seconds += d.seconds
            worker_seconds += d.seconds * d.servers * self.workers
        used = next((h for h in HISTOGRAMS if counts[h] > 0), HISTOGRAMS[-1])
        count = counts[used]
        p95 = histogram_quantile(0.95, merged[used]) if count > 0 else None
        rate = count / seconds if seconds > 0 else 0.0
        cpu = None
        if worker_seconds > 0:
            cpu = 100.0 * ticks / os.sysconf("SC_CLK_TCK") / worker_seconds
        return Measurement(p95_ms=None if p95 is None else p95 * 1000.0,
                           requests_per_second=rate, cpu_percent=cpu)

    def _scrape(self, name: str) -> _Scrape | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            host, port = self.cluster.address(name)
            proc = self.cluster.process(name)
            conn = http.client.HTTPConnection(host, port, timeout=2.0)
            try:
                conn.request("GET", "/metrics", headers={"Host": "localhost"})
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        except (OSError, KeyError, ClusterError, http.client.HTTPException):
            return None
        if resp.status != 200:
            return None
        buckets: dict[str, dict[float, float]] = {h: {} for h in HISTOGRAMS}
        count = dict.fromkeys(HISTOGRAMS, 0.0)
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            if family.name not in HISTOGRAMS:
                continue
            h = family.name
            for sample in family.samples:
                if sample.name == h + "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[h][bound] = buckets[h].get(bound, 0.0) + sample.value
                elif sample.name == h + "_count":
                    count[h] += sample.value
        return _Scrape(buckets, count, _cpu_ticks(proc.pid), time.monotonic())


def _cpu_ticks(pgid: int) -> float:
    """User + system CPU ticks of the live processes of group ``pgid``."""
    total = 0.0
    for pid in group_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += float(fields[11]) + float(fields[12])  # utime, stime
    return total


@dataclass(frozen=True)
class TracePoint:
    """One tick of the autoscaler: when, how many servers, what was measured and done."""

    t: float
    servers: int
    p95_ms: float | None
    requests_per_second: float
    cpu_percent: float | None
    action: str = ""


@dataclass
class Autoscaler:
    """Measure, decide and resize the app servers of ``cluster`` every ``spec.interval``."""

    cluster: LocalCluster
    spec: AutoscaleSpec
    on_point: Callable[[TracePoint], None] = lambda point: None
    trace: list[TracePoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policy = Policy(self.spec)
        self.sampler = Sampler(self.cluster, workers=self.cluster.topology.app.workers,
                               window=self.spec.window)
        self.pool = AppPool(self.cluster)
        self._t0 = time.monotonic()

    def tick(self) -> TracePoint:
        """One round: measure, decide, act (at most one step); return the trace point."""
        measured = self.sampler.measure()
        servers = len(self.pool.servers())
        now = time.monotonic()
        want = self.policy.desired(now, servers, measured.value(self.spec.metric))
        action = ""
        if want != servers:
            action = self._resize(servers, want)
            if action:
                self.policy.changed(time.monotonic())
                # The windows that follow a change measure the new shape only.
                self.sampler.measure()
                self.sampler.reset()
        point = TracePoint(t=round(now - self._t0, 3), servers=len(self.pool.servers()),
                           p95_ms=measured.p95_ms,
                           requests_per_second=measured.requests_per_second,
                           cpu_percent=measured.cpu_percent, action=action)
        self.trace.append(point)
        self.on_point(point)
        return point

    def _resize(self, servers: int, want: int) -> str:
        try:
            with reshaping(self.cluster, wait=False):
                done = []
                while len(self.pool.servers()) < want:
                    done.append(f"+{self.pool.add()}")
                while len(self.pool.servers()) > want:
                    done.append(f"-{self.pool.remove()}")
                return " ".join(done)
        except ClusterError as exc:
            return f"skipped: {exc}"

    def run(self, stop: threading.Event, *, seconds: float = 0.0) -> list[TracePoint]:
        """Tick every ``interval`` until ``stop`` is set (or ``seconds`` passed)."""
        end = time.monotonic() + seconds if seconds else math.inf
        self.sampler.measure()  # baseline
        while not stop.wait(self.spec.interval) and time.monotonic() < end:
            self.tick()
        return self.trace


def write_trace(points: Iterable[TracePoint], path: Path) -> None:
    """Store ``points`` as JSON lines."""
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in points), encoding="utf-8")


def run_autoscaler(cluster: LocalCluster, *, seconds: float = 0.0, trace: str = "") -> int:
    """``djscale cluster autoscale``: run in the foreground, print each tick."""
    spec = cluster.topology.app.autoscale
    if spec is None:
        raise ClusterError("the topology has no [app] autoscale: add e.g. autoscale = "
                           "{ min = 1, max = 4, metric = \"latency\", target = 250 }")
    if not cluster.app_servers():
        raise ClusterError("no app servers run here: start the cluster with `djscale "
                           "cluster up` first")

    def show(p: TracePoint) -> None:
        p95 = "-" if p.p95_ms is None else f"{p.p95_ms:.0f} ms"
        cpu = "-" if p.cpu_percent is None else f"{p.cpu_percent:.0f} %"
        print(f"{p.t:7.1f} s  servers {p.servers}  p95 {p95}  {p.requests_per_second:.0f} "
              f"req/s  cpu {cpu}  {p.action}", flush=True)

    scaler = Autoscaler(cluster, spec, on_point=show)
    stop = threading.Event()
    with contextlib.suppress(KeyboardInterrupt):
        scaler.run(stop, seconds=seconds)
    if trace:
        write_trace(scaler.trace, Path(trace))
    return 0
