"""Sharding: 64-bit id generation and shard routing, each against its plain baseline.

A cluster with a main primary and two shard primaries (no replicas). The measurements
run in a child process (``python -m benchmarks.bench_sharding STATE_DIR``) so it can
configure Django with the sharded test app without disturbing other benchmarks:

1. **Bulk id generation**: ``INSERT ... SELECT djscale_next_id(...) ... FROM
   generate_series`` vs the same insert into a ``bigserial`` table (ids/s).
2. **Single-row insert**: ``INSERT ... VALUES (djscale_next_id(...), ...) RETURNING id``
   vs ``INSERT ... RETURNING id`` with ``bigserial`` (inserts/s, one round trip each).
3. **Routing overhead**: ``Order.objects.filter(user_id=k).count()`` (shard found from the
   key through the cached shard map) vs ``Order.objects.using(alias).filter(...)`` with
   the alias given, i.e. the same SQL unrouted (queries/s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Context, Result

TOPIC = "sharding"


def run(ctx: Context) -> list[Result]:
    """Boot a 2-shard cluster, measure in a child process, return the ratios."""
    cluster = ctx.factory({"project": {"name": "benchshard"}, "postgres": {"database": "bs"},
                           "shards": [{"name": "shard1"}, {"name": "shard2"}]},
                          parts=("postgres", "redis"), name="sharding")
    topo_file = Path(cluster.state_dir) / "djscale.toml"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_sharding", str(cluster.state_dir),
         str(topo_file), "quick" if ctx.quick else "full"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"sharding benchmark child failed:\n{out.stderr[-3000:]}")
    m: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        Result(TOPIC, "bulk id generation: djscale_next_id() vs bigserial",
               value=m["bulk_sharded"], baseline=m["bulk_plain"], unit="rows/s",
               baseline_name="bigserial INSERT ... SELECT", target=">= 0.3x",
               met=m["bulk_sharded"] / m["bulk_plain"] >= 0.3,
               notes=f"{m['bulk_rows']:,} rows per INSERT ... SELECT on one shard"),
        Result(TOPIC, "single-row insert with djscale id vs bigserial",
               value=m["row_sharded"], baseline=m["row_plain"], unit="inserts/s",
               baseline_name="bigserial INSERT RETURNING", target=">= 0.8x",
               met=m["row_sharded"] / m["row_plain"] >= 0.8,
               notes="raw SQL through Django's cursor, one round trip and commit per insert"),
        Result(TOPIC, "routed ORM query (shard from key) vs unrouted .using(alias)",
               value=m["routed"], baseline=m["unrouted"], unit="queries/s",
               baseline_name="same query with .using(alias)", target=">= 0.9x",
               met=m["routed"] / m["unrouted"] >= 0.9,
               notes=f"routing alone (hash + cached map lookup) costs "
                     f"{m['route_us']:.2f} us per query"),
    ]


def _child(state_dir: str, topo_file: str, quick: bool) -> dict[str, float]:
    """Configure Django on the cluster, migrate, and measure (runs in the child process)."""
    import time

    sys.path.insert(0, str(ROOT))
    import django
    from django.conf import settings

    from djscale.settings import from_topology

    conf = from_topology(topo_file, state_dir=state_dir)
    conf["DJSCALE_DERIVED"]["SHARDING"]["MAP_TTL_SECONDS"] = 1.0
    settings.configure(
        **conf, SECRET_KEY="bench", USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "djscale",
                        "djscale.sharding", "tests.shardapp"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from tests.shardapp.models import Order, ShardedUser

    from benchmarks.common import interleaved
    from djscale.sharding.config import get_config

    call_command("migrate", verbosity=0)
    call_command("migrate_shards", verbosity=0, stdout=open("/dev/null", "w"))  # noqa: SIM115
    epoch = get_config().epoch_ms
    cur = connections["shard1"].cursor()
    cur.execute("DROP TABLE IF EXISTS bench_plain, bench_sharded")
    cur.execute("CREATE TABLE bench_plain (id bigserial PRIMARY KEY, k bigint, v int)")
    cur.execute("CREATE TABLE bench_sharded (id bigint PRIMARY KEY, k bigint, v int)")

    rows = 20000 if quick else 100000
    bulk: dict[str, list[float]] = {"plain": [], "sharded": []}
    for _ in range(3 if quick else 5):
        for name, sql, params in (
            ("plain", "INSERT INTO bench_plain (k, v) SELECT g, g FROM generate_series(1, %s) g",
             [rows]),
            ("sharded", "INSERT INTO bench_sharded SELECT djscale_next_id((g %% 1024)::int, %s),"
             " g, g FROM generate_series(1, %s) g", [epoch, rows]),
        ):
            start = time.perf_counter()
            cur.execute(sql, params)
            bulk[name].append(rows / (time.perf_counter() - start))
        cur.execute("TRUNCATE bench_plain, bench_sharded")

    def row_plain() -> None:
        cur.execute("INSERT INTO bench_plain (k, v) VALUES (%s, 1) RETURNING id", [epoch])
        cur.fetchone()

    def row_sharded() -> None:
        cur.execute("INSERT INTO bench_sharded VALUES (djscale_next_id(7, %s), 1, 1) "
                    "RETURNING id", [epoch])
        cur.fetchone()

    n = 300 if quick else 1500
    single = interleaved({"plain": row_plain, "sharded": row_sharded}, number=n,
                         rounds=3 if quick else 7)

    ShardedUser.objects.bulk_create([ShardedUser(user_id=k, email=f"{k}@b") for k in range(1, 501)])
    Order.objects.bulk_create([Order(user_id=k, amount=k) for k in range(1, 501) for _ in range(4)])
    key = 42
    alias = Order.alias_for_key(key)

    def routed() -> None:
        Order.objects.filter(user_id=key).count()

    def unrouted() -> None:
        Order.objects.using(alias).filter(user_id=key).count()

    queries = interleaved({"routed": routed, "unrouted": unrouted}, number=n,
                          rounds=3 if quick else 7)
    route = interleaved({"route": lambda: Order.alias_for_key(key)}, number=20000, rounds=3)
    cur.execute("DROP TABLE bench_plain, bench_sharded")
    return {
        "bulk_rows": rows,
        "bulk_plain": max(bulk["plain"]), "bulk_sharded": max(bulk["sharded"]),
        "row_plain": 1 / single["plain"], "row_sharded": 1 / single["sharded"],
        "routed": 1 / queries["routed"], "unrouted": 1 / queries["unrouted"],
        "route_us": route["route"] * 1e6,
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], sys.argv[3] == "quick")))
