"""Autoscaling: the local autoscaler under a load step (4x heavier for 60 s, then back).

One demo cluster (primary + 1 replica, Redis) starts with **one** app server of one sync
worker (one CPU's worth, as in bench_scaleout) behind HAProxy, with
``[app] autoscale = { min = 1, max = 4, metric = "latency", target, cooldown = 15 }``;
:class:`djscale.cluster.autoscale.Autoscaler` runs beside the load and records a trace.

The load is wrk with ``examples/demo/load.lua`` (three reads for each write) and a pause
of 150 ms between a connection's requests, so the offered load is set by the number of
connections: 2 connections (base), then 8 (the step: 4x) for 60 s, then 2 again. The
reads are the demo's ``/wait?ms=40``: 40 ms waiting on a replica, so a one-worker server
answers at most ~25 a second whatever else runs on this shared machine (CPU-bound views
cannot show scale-out on 2 cores: see bench_scaleout). The base (~10 req/s) is 40 % of
one server, the step 160 %. Target p95: 250 ms (the base runs at ~100 ms on this shared
machine). Reported: how long the first scale-up took after the
step began (vs the cool-down), the p95 at the end of the step (vs the target), the
servers left once the load went back (vs the most that ran), and the requests wrk saw
fail (none expected).
The trace is plotted as ``docs/img/autoscale-trace.svg`` (servers, p95 and req/s over
time) and stored as ``benchmarks/autoscale-trace.json``.

``python -m benchmarks autoscale`` runs only this (about 3 minutes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import ROOT, Context, Result, demo_project
from djscale.cluster import LocalCluster
from djscale.cluster.autoscale import Autoscaler, TracePoint
from djscale.testing import write_topology

TOPIC = "autoscale"
LOAD = ROOT / "examples/demo/load.lua"
SVG = "docs/img/autoscale-trace.svg"
TRACE = "benchmarks/autoscale-trace.json"
COOLDOWN = 15.0
BASE, STEP = 2, 8
WAIT_MS = 40
"""Each read waits this long on a replica: one sync worker answers at most 25 a second."""
PAUSE_MS = 150
"""Each connection's pause between requests: 2 connections offer ~10 req/s (40 % of one
server), 8 offer ~40 (160 %)."""
TARGET_MS = 250.0
PHASES = (("base", BASE, 20), ("step 4x", STEP, 60), ("back", BASE, 80))


def run(ctx: Context) -> list[Result]:
    phases = tuple((n, c, max(8, s // 4)) for n, c, s in PHASES) if ctx.quick else PHASES
    data = {
        "project": demo_project(),
        "postgres": {"database": "demo", "replicas": 1},
        "app": {"servers": 1, "workers": 1},
        "lb": {"kind": "haproxy"},
    }
    probe = ctx.factory(data, parts=("postgres", "redis", "migrate", "app", "lb"),
                        name="autoscale")
    host, port = probe.address("lb")
    url = f"http://{host}:{port}/"
    env = {"DEMO_DELAY_MS": str(PAUSE_MS), "DEMO_READ_PATH": f"/wait?ms={WAIT_MS}"}
    target = TARGET_MS
    autoscale = {"min": 1, "max": 4, "metric": "latency", "target": target,
                 "cooldown": COOLDOWN, "interval": 2.0, "window": 10.0}
    spec_path = probe.state_dir / "djscale.toml"
    cluster = _with_autoscale(probe, spec_path, autoscale)
    assert cluster.topology.app.autoscale is not None
    scaler = Autoscaler(cluster, cluster.topology.app.autoscale,
                        on_point=lambda p: print(f"   {p.t:6.1f} s servers {p.servers} "
                                                 f"p95 {p.p95_ms} rps "
                                                 f"{p.requests_per_second:.0f} {p.action}",
                                                 flush=True))
    stop = threading.Event()
    thread = threading.Thread(target=scaler.run, args=(stop,), daemon=True)
    thread.start()
    marks: list[tuple[str, float]] = []
    failed = 0.0
    try:
        for name, connections, seconds in phases:
            marks.append((name, time.monotonic() - scaler._t0))
            failed += _wrk_for(url, connections, seconds, env)["failed"]
    finally:
        stop.set()
        thread.join(60)
    trace = scaler.trace
    step_at, back_at = marks[1][1], marks[2][1]
    end = marks[2][1] + phases[2][2]
    first_up = next((p.t for p in trace if p.t >= step_at and p.action.startswith("+")), None)
    peak = max(p.servers for p in trace)
    late_step = [p.p95_ms for p in trace if back_at - 15 <= p.t < back_at and p.p95_ms]
    p95_end_of_step = max(late_step) if late_step else float("nan")
    servers_after = trace[-1].servers if trace else 0
    ctx.output(TRACE).write_text(json.dumps({"target_ms": target, "cooldown": COOLDOWN,
                                 "pause_ms": PAUSE_MS, "wait_ms": WAIT_MS, "marks": marks,
                                 "end": end,
                                 "trace": [asdict(p) for p in trace]}, indent=1) + "\n")
    _plot(ctx, trace, marks, target)
    up_seconds = (first_up - step_at) if first_up is not None else float("nan")
    return [
        Result(TOPIC, "first server added after the 4x step", up_seconds, COOLDOWN, "s",
               "the cool-down", higher_is_better=False, target="< 1x",
               met=first_up is not None and up_seconds < COOLDOWN,
               notes=f"{peak} servers at most; base load {BASE} connections with "
                     f"{PAUSE_MS} ms pauses, step {STEP}; reads wait {WAIT_MS} ms on "
                     "a replica"),
        Result(TOPIC, "p95 in the last 15 s of the step", p95_end_of_step, target, "ms",
               "the target", higher_is_better=False, target="< 1x",
               met=p95_end_of_step < target,
               notes="the worst p95 (each over the last 10 s) of the step's last 15 s"),
        Result(TOPIC, "app servers once the load went back", servers_after, peak, "servers",
               "the most that ran", higher_is_better=False, target="< 1x",
               met=servers_after < peak,
               notes=f"{failed:.0f} requests failed (non-2xx or socket errors) in the whole run"),
    ]


def _with_autoscale(probe: LocalCluster, path: Path,
                    autoscale: dict[str, object]) -> LocalCluster:
    """The running cluster seen through its topology file with ``[app] autoscale`` added."""
    data = tomllib.loads(path.read_text())
    data["app"] = {**data["app"], "autoscale": autoscale}
    topology = write_topology(data, path, base=Path(data["project"]["pythonpath"]))
    return LocalCluster(topology, probe.state_dir)


def _wrk_for(url: str, connections: int, seconds: int, env: dict[str, str]) -> dict[str, float]:
    """One bounded wrk run of the demo's mixed load; p95 (ms), req/s and failures."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(LOAD), url], capture_output=True, text=True, check=True,
        timeout=seconds + 60, env={**os.environ, **env}).stdout
    failed = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        failed += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        failed += sum(int(g) for g in m.groups())
    # wrk --latency prints the 50/75/90/99th percentiles.
    return {"p90_ms": _percentile(out, "90"), "failed": failed,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]


def _percentile(out: str, pct: str) -> float:
    for got, num, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        if got == pct:
            return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return 0.0


def _plot(ctx: Context, trace: list[TracePoint], marks: list[tuple[str, float]],
          target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in trace]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    a.step(t, [p.servers for p in trace], where="post", color="tab:blue")
    a.set_ylabel("app servers")
    a.set_ylim(0, 5)
    b.plot(t, [p.p95_ms if p.p95_ms is not None else float("nan") for p in trace],
           color="tab:red", marker=".", linewidth=1)
    b.axhline(target, color="grey", linestyle="--", linewidth=1)
    b.text(t[0] if t else 0, target, f" target {target:.0f} ms", va="bottom", fontsize=8,
           color="grey")
    b.set_ylabel("p95 (ms)")
    c.plot(t, [p.requests_per_second for p in trace], color="tab:green", linewidth=1)
    c.set_ylabel("req/s")
    c.set_xlabel("seconds")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.axvspan(marks[1][1], marks[2][1], color="orange", alpha=0.12)
    a.set_title(f"Autoscaler under a 4x load step (shaded), target p95 {target:.0f} ms, "
                f"cool-down {COOLDOWN:.0f} s",
                fontsize=10)
    fig.tight_layout()
    svg = ctx.output(SVG)
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    ctx.plots.append(svg)
