"""Scale-out: requests/s of a database-backed view with 1, 2 and 4 app servers behind nginx.

One demo cluster (primary + 1 replica, Redis, 4 gunicorn app servers of one sync worker
each) and three nginx instances in front of the first 1, 2 and 4 app servers, measured
with wrk in alternating rounds. Baseline: the same view sent straight to one app server.

Each app server has one worker, i.e. one CPU's worth of capacity, as if each were a small
machine of its own: adding servers then adds capacity until the machine itself runs out.
On a 2-core machine that happens at 2 servers (the load generator, nginx and PostgreSQL
share the same cores), so 4 servers cannot beat 2 here; on real hosts each server brings
its own CPUs.
"""

from __future__ import annotations

import statistics

from benchmarks.common import Context, Result, demo_project, start_lb, wrk
from djscale.topology import parse

TOPIC = "scale-out"


def run(ctx: Context) -> list[Result]:
    data = {
        "project": demo_project(),
        "postgres": {"database": "demo", "replicas": 1},
        "app": {"servers": 4, "workers": 1},
    }
    cluster = ctx.factory(data, parts=("postgres", "redis", "migrate", "app"), name="scaleout")
    ups = cluster.upstreams()
    spec = parse({"lb": {"kind": "nginx", "method": "least_conn"}}).lb
    sizes = (1, 2, 4)
    procs = {}
    try:
        for n in sizes:
            procs[n] = start_lb(ctx, spec, ups[:n], f"lb-{n}")
        seconds = 2 if ctx.quick else 4
        rounds = 1 if ctx.quick else 3
        direct = f"http://{ups[0].host}:{ups[0].port}/whoami"
        urls: dict[object, str] = {"direct": direct, **{n: f"http://{p.host}:{p.port}/whoami"
                                     for n, p in procs.items()}}
        rps: dict[object, list[float]] = {k: [] for k in urls}
        p99: dict[object, list[float]] = {k: [] for k in urls}
        for _ in range(rounds):
            for key, url in urls.items():
                r = wrk(url, seconds=seconds, connections=32)
                rps[key].append(r.requests_per_second)
                p99[key].append(r.p99_ms)
    finally:
        for proc in procs.values():
            proc.stop()
    med = {k: statistics.median(v) for k, v in rps.items()}
    med_p99 = {k: statistics.median(v) for k, v in p99.items()}
    results = [
        Result(TOPIC, f"nginx -> {n} app server{'s' if n > 1 else ''}, DB-backed view",
               med[n], med["direct"], "req/s", "straight to 1 app server",
               notes=f"p99 {med_p99[n]:.1f} ms vs {med_p99['direct']:.1f} ms direct")
        for n in sizes
    ]
    results.append(Result(TOPIC, "4 vs 1 app servers behind nginx", med[4], med[1], "req/s",
                          "1 app server behind nginx",
                          notes="one sync worker per app server; bounded by the machine's "
                                "cores, which the load generator, nginx and PostgreSQL share"))
    results.insert(2, Result(TOPIC, "2 vs 1 app servers behind nginx", med[2], med[1], "req/s",
                             "1 app server behind nginx", target=">= 1x (more than 1)",
                             met=med[2] > med[1]))
    _plot(ctx, sizes, med, med_p99)
    return results


def _plot(ctx: Context, sizes: tuple[int, ...], rps: dict[object, float],
          p99: dict[object, float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(sizes, [rps[n] for n in sizes], marker="o", label="through nginx")
    a.axhline(rps["direct"], color="grey", linestyle="--", label="1 server, direct")
    a.set_xlabel("app servers")
    a.set_ylabel("requests/s")
    a.set_xticks(list(sizes))
    a.legend()
    b.plot(sizes, [p99[n] for n in sizes], marker="o", color="tab:red")
    b.set_xlabel("app servers")
    b.set_ylabel("p99 latency (ms)")
    b.set_xticks(list(sizes))
    fig.suptitle("DB-backed view, 1 worker per app server, wrk 32 connections")
    fig.tight_layout()
    out = ctx.output("docs/img/scaleout.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    ctx.plots.append(out)
