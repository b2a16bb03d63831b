"""What every benchmark module shares: the result record, timing helpers, wrk runs.

A benchmark module is ``benchmarks/bench_<topic>.py`` with a function
``run(ctx: Context) -> list[Result]``. Every :class:`Result` is a ratio of two figures
measured in the same run, on the same machine, side by side (never an absolute timing
compared with a number from elsewhere): machines are shared and noisy.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from djscale.cluster.lb import Upstream, lb_process
from djscale.cluster.local import http_ok
from djscale.cluster.supervisor import ManagedProcess, free_port
from djscale.testing import ClusterFactory
from djscale.topology import LoadBalancerSpec, load

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """One row of docs/benchmarks.md: ``value`` against ``baseline`` in the same run."""

    topic: str
    name: str
    value: float
    baseline: float
    unit: str
    baseline_name: str
    higher_is_better: bool = True
    target: str = ""
    met: bool | None = None
    notes: str = ""
    module: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline."""
        return self.value / self.baseline if self.baseline else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ratio"] = self.ratio
        return d


@dataclass
class Context:
    """Shared by the benchmark modules of one run: a cluster factory and a scratch folder."""

    factory: ClusterFactory
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="djbench-")))
    quick: bool = False
    plots: list[Path] = field(default_factory=list)
    record: bool = True
    """False for a ``--quick`` run without ``--write``: it must leave the repository as is."""

    def output(self, relative: str) -> Path:
        """Where a bench writes the file ``relative`` (to the repository) it records: there,
        or in the scratch folder when this run records nothing."""
        path = (ROOT if self.record else self.scratch) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def demo_project() -> dict[str, str]:
    """The ``[project]`` table of examples/demo, usable from a benchmark's cluster."""
    project = load(ROOT / "examples/demo/djscale.toml").project
    return {"name": "demo", "pythonpath": str(ROOT / "examples/demo"),
            "settings": project.settings, "wsgi": project.wsgi}


def start_lb(ctx: Context, spec: LoadBalancerSpec, upstreams: list[Upstream],
             name: str) -> ManagedProcess:
    """A load balancer of ``spec`` in front of ``upstreams`` on a free port, ready to serve.

    The caller stops it; it is stopped here when it does not become ready.
    """
    proc = lb_process(spec, upstreams, port=free_port(), run_dir=ctx.scratch / name,
                      log=ctx.scratch / f"{name}.log")
    proc.name = name
    proc.start()
    try:
        proc.wait_ready(lambda: http_ok(proc.host, proc.port), 20)
    except BaseException:
        proc.stop()
        raise
    return proc


def per_call_seconds(fn: Callable[[], object], *, number: int = 20000, repeat: int = 5) -> float:
    """Best-of-``repeat`` mean seconds per call of ``fn`` over ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def interleaved(fns: dict[str, Callable[[], object]], *, number: int = 5000,
                rounds: int = 7) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds.

    Alternating the candidates round by round spreads the machine's noise over all of
    them, so their ratio is fairer than timing one after the other.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {k: statistics.median(v) for k, v in samples.items()}


@dataclass
class WrkResult:
    """What ``wrk`` reported."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


_LAT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, *, seconds: int = 5, connections: int = 16, threads: int = 2,
        script: str = "") -> WrkResult:
    """Run ``wrk`` against ``url`` (bounded in time; ``script``: a wrk Lua script)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (run `make setup`)")
    extra = ["-s", script] if script else []
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
         "--latency", *extra, url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, num, unit in _LAT.findall(out):
        lat[pct] = float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, lat.get("50", 0.0), lat.get("99", 0.0), errors, total)
