"""``make demo``: boot the demo cluster, seed it, drive load through the LB, report, shut down.

Boots examples/demo/djscale.toml (PostgreSQL primary + 2 streaming replicas, Redis,
2 gunicorn app servers behind nginx, a Celery worker, the outbox relay) under
``.djscale/demo``, writes a few rows through the load balancer, writes notes whose events a
Celery consumer indexes, sends a bounded burst of GET requests, and prints which app
server and which database answered each, then stops everything.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from djscale.cluster import LocalCluster
from djscale.errors import DjscaleError
from djscale.topology import load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _request(url: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _table(title: str, counts: collections.Counter[str]) -> None:
    total = sum(counts.values())
    print(f"\n{title}")
    for key, n in sorted(counts.items()):
        print(f"  {key:<28} {n:>5}  {'#' * round(40 * n / total)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()

    topology = load(HERE / "djscale.toml")
    cluster = LocalCluster(topology, ROOT / ".djscale" / "demo")
    if cluster.state.services:
        # An earlier run's cluster (kept with --keep, or stopped by hand): start clean.
        print(f"== removing the cluster an earlier run left in {cluster.state_dir}")
        cluster.down(purge=True)
        cluster = LocalCluster(topology, ROOT / ".djscale" / "demo")
    print("== booting the demo cluster (PostgreSQL primary + 2 replicas, Redis, "
          "2 app servers, nginx, Celery, outbox relay)")
    started = time.monotonic()
    finished = False
    try:
        cluster.up()
        print(f"   ready in {time.monotonic() - started:.1f}s\n")
        subprocess.run([sys.executable, "-m", "djscale.cli", "cluster", "status",
                        "--topology", str(HERE / "djscale.toml"),
                        "--state-dir", str(cluster.state_dir)], check=False)
        host, port = cluster.address("lb")
        base = f"http://{host}:{port}"
        names = {cluster.address(p.name)[1]: p.name for p in cluster.processes()
                 if p.kind == "postgres"}

        print(f"\n== writing 20 rows through the load balancer ({base}/visit)")
        writes = [_request(f"{base}/visit", "POST") for _ in range(20)]
        w_servers = collections.Counter(str(w["app_server"]) for w in writes)
        w_dbs = collections.Counter(names.get(int(str(w["write_db_port"])), "?")
                                    for w in writes)
        _table("writes answered by app server:", w_servers)
        _table("writes went to database:", w_dbs)

        print(f"\n== 20 notes through the load balancer ({base}/notes): each publishes a "
              "note_created event (outbox -> relay -> Celery -> inbox)")
        for _ in range(20):
            _request(f"{base}/notes", "POST")
        deadline = time.monotonic() + 60
        counts = _request(f"{base}/notes")
        while counts["indexed"] != counts["notes"] and time.monotonic() < deadline:
            time.sleep(0.2)
            counts = _request(f"{base}/notes")
        print(f"   {counts['notes']} notes written, {counts['indexed']} indexed by the "
              "Celery consumer (once each)")

        print(f"\n== {args.requests} GET requests through the load balancer, 16 at a time")
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            reads = list(pool.map(lambda _: _request(f"{base}/whoami"), range(args.requests)))
        elapsed = time.monotonic() - t0
        _table("reads answered by app server:", collections.Counter(
            str(r["app_server"]) for r in reads))
        _table("reads went to database:", collections.Counter(
            names.get(int(str(r["read_db_port"])), "?") for r in reads))
        print(f"\n   {len(reads)} requests, 0 failed, {len(reads) / elapsed:,.0f} req/s "
              "(Python client on the same machine)")

        if shutil.which("wrk"):
            out = subprocess.run(["wrk", "-t2", "-c16", "-d3s", f"{base}/whoami"],
                                 capture_output=True, text=True, check=False).stdout
            rps = [ln for ln in out.splitlines() if "Requests/sec" in ln]
            if rps:
                print(f"   wrk, 3 s, 16 connections through nginx: {rps[0].split()[-1]} req/s")
        finished = True
    except (DjscaleError, OSError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not finished:
            # Nothing the demo started keeps running; data and logs stay for a look.
            print("\n== shutting the cluster down after an error")
            cluster.down()
            print(f"   done: no process of the cluster is left; logs in {cluster.log_dir}")
        elif not args.keep:
            print("\n== shutting the cluster down")
            cluster.down(purge=True)
            print("   done: no process of the cluster is left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
