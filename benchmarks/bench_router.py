"""Router overhead: the same ORM query with PrimaryReplicaRouter and with no router.

A cluster of a primary and 2 streaming replicas is booted; the measurement runs in a
child process (Django can be configured once per process, and other benchmarks
configure it their way) with two kinds of aliases pointing at the same servers:

- the replication group ``default`` / ``default_replica1`` / ``default_replica2``, used
  through ``PrimaryReplicaRouter`` (replica pool, consistency state, write detection);
- ``plain``, ``plain_replica1``, ``plain_replica2``: copies of their settings that belong
  to no group, queried with ``.using()`` (reads spread at random over both replicas, as
  the router does) so no router code and no write-detection wrapper runs: the baseline.

Reads: ``ContentType.objects.filter(app_label=...).first()`` (one round trip to a
replica). Writes: ``ContentType.objects.filter(pk=-1).update(model=...)`` (one round trip
to the primary, matching no row). Times are medians of interleaved rounds; the ratio is
routed / baseline (lower is better; target: within 5 %).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.common import ROOT, Context, Result

TOPIC = "router"


def run(ctx: Context) -> list[Result]:
    cluster = ctx.factory({"project": {"name": "benchrouter"},
                           "postgres": {"database": "bench", "replicas": 2}},
                          parts=("postgres", "redis"), name="bench-router")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_router", str(cluster.state_dir),
         cluster.topology.source, "quick" if ctx.quick else "full"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    if child.returncode != 0:
        raise RuntimeError(f"router benchmark child failed:\n{child.stderr[-3000:]}")
    data = json.loads(child.stdout.strip().splitlines()[-1])
    decision_us = data["decision"] * 1e6
    # Result.ratio is value / baseline: scale the baseline so that it shows the median of
    # the per-round ratios, the robust figure.
    read_base = data["routed_read"] / data["read_ratio"]
    write_base = data["routed_write"] / data["write_ratio"]
    return [
        Result(TOPIC, "read through PrimaryReplicaRouter (to a replica)", data["routed_read"]
               * 1e6, read_base * 1e6, "us/query", "same query, no router",
               higher_is_better=False, target="<= 1.05x", met=data["read_ratio"] <= 1.05,
               notes=f"ratio = median of {data['rounds']} per-round ratios (rounds alternate "
                     f"which goes first); medians alone: {data['routed_read'] * 1e6:.0f} vs "
                     f"{data['plain_read'] * 1e6:.0f} us. Router decision alone "
                     f"(router.db_for_read): {decision_us:.2f} us. Reads landed on "
                     f"{data['read_aliases']}"),
        Result(TOPIC, "read: no-router query + the router decision (estimate)",
               (data["plain_read"] + data["decision"]) * 1e6, data["plain_read"] * 1e6,
               "us/query", "same query, no router", higher_is_better=False,
               target="<= 1.05x",
               met=data["plain_read"] + data["decision"] <= 1.05 * data["plain_read"],
               notes="the router's own cost, timed alone (millions of calls) and added to "
                     "the query: a stable figure where the end-to-end ratios above move by "
                     "a few percent from run to run on a shared machine"),
        Result(TOPIC, "write through PrimaryReplicaRouter (to the primary)",
               data["routed_write"] * 1e6, write_base * 1e6, "us/query",
               "same query, no router, no write detection", higher_is_better=False,
               target="<= 1.05x", met=data["write_ratio"] <= 1.05,
               notes=f"medians alone: {data['routed_write'] * 1e6:.0f} vs "
                     f"{data['plain_write'] * 1e6:.0f} us"),
    ]


def _child(state_dir: str, topology: str, mode: str) -> dict[str, Any]:
    import copy
    import random
    from collections import Counter

    import django
    from django.conf import settings

    from djscale.settings import from_topology

    values = from_topology(topology, state_dir=state_dir)
    databases = values["DATABASES"]
    databases["plain"] = copy.deepcopy(databases["default"])
    for i in (1, 2):
        databases[f"plain_replica{i}"] = copy.deepcopy(databases[f"default_replica{i}"])
        databases[f"plain_replica{i}"].pop("TEST", None)
    settings.configure(
        DATABASES=databases, DATABASE_ROUTERS=["djscale.db.routers.PrimaryReplicaRouter"],
        DJSCALE_DERIVED=values["DJSCALE_DERIVED"],
        INSTALLED_APPS=["django.contrib.contenttypes", "djscale"],
        USE_TZ=True, SECRET_KEY="bench", DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    import time

    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import connections, router

    from benchmarks.common import interleaved
    from djscale.db import consistency
    from djscale.db.pool import get_pool

    call_command("migrate", database="default", verbosity=0)
    deadline = time.monotonic() + 30
    pool = get_pool("default")
    assert pool is not None
    migrated = consistency.handoff_tokens()["default"]
    # Replicas have replayed the migration and the pool has seen them do it.
    while len(pool.usable(migrated)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connections["plain"].settings_dict["PORT"] == databases["default"]["PORT"]

    # Many short alternating rounds: the machine is shared and its noise comes in bursts.
    number, rounds = (100, 5) if mode == "quick" else (200, 41)
    with consistency.scope():  # a request that has not written: reads go to replicas
        landed: Counter[str] = Counter()

        def routed_read() -> object:
            return ContentType.objects.filter(app_label="bench").first()

        plain_replicas = ("plain_replica1", "plain_replica2")
        rng = random.Random(1)

        def plain_read() -> object:
            # Spread over both replicas like the router, so only the routing differs.
            alias = rng.choice(plain_replicas)
            return ContentType.objects.using(alias).filter(app_label="bench").first()

        for _ in range(200):
            landed[router.db_for_read(ContentType)] += 1
            routed_read()
            plain_read()
        reads = _paired(routed_read, plain_read, number=number, rounds=rounds)
        decision = interleaved({"d": lambda: router.db_for_read(ContentType)},
                               number=number * 5, rounds=rounds)["d"]

    with consistency.scope():  # a request that writes
        def routed_write() -> object:
            return ContentType.objects.filter(pk=-1).update(model="bench")

        def plain_write() -> object:
            return ContentType.objects.using("plain").filter(pk=-1).update(model="bench")

        for _ in range(100):
            routed_write()
            plain_write()
        writes = _paired(routed_write, plain_write, number=number, rounds=rounds)
    return {"routed_read": reads[0], "plain_read": reads[1], "read_ratio": reads[2],
            "routed_write": writes[0], "plain_write": writes[1], "write_ratio": writes[2],
            "decision": decision, "read_aliases": dict(landed), "rounds": rounds}


def _paired(routed: Callable[[], object], plain: Callable[[], object], *, number: int,
            rounds: int) -> tuple[float, float, float]:
    """Median s/call of each, and the median of per-round ratios (rounds alternate order).

    The ratio of two runs taken back to back within one round is robust to the bursts of
    load of a shared machine, which the ratio of two medians is not.
    """
    import statistics
    import time

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    a, b, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            tb, ta = timed(plain), timed(routed)
        else:
            ta, tb = timed(routed), timed(plain)
        a.append(ta)
        b.append(tb)
        ratios.append(ta / tb)
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:4])))
