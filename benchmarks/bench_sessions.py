"""Sessions on a Redis Cluster: what waiting for a replica's ack (WAIT) costs per write.

Two ratios, measured side by side in the same run on a 3-master / 3-replica Redis
Cluster of the local cluster (loopback), with a session-sized payload:

1. ``RedisL2.write_acked`` with ``replicas=1`` (SET + ``WAIT 1``, what ``djscale.sessions``
   does on a cluster) vs the same call with ``replicas=0`` (SET alone on the same path):
   the price of the replica round trip itself.
2. The same acknowledged write vs ``RedisL2.set`` (what Django's ``cached_db`` engine does
   through ``TieredCache``): the price of the whole durable path against the usual one.

Lower is better; no targets: the point is to show the cost next to what it buys
(docs/cache.md, "Redis Cluster: sessions, rate limits, failover").
"""

from __future__ import annotations

import pickle
import time

import redis

from benchmarks.common import Context, Result, interleaved

TOPIC = "sessions"

SESSION = {"_auth_user_id": "123456789", "_auth_user_backend":
           "django.contrib.auth.backends.ModelBackend", "_auth_user_hash": "f" * 64,
           "cart": [{"sku": f"SKU-{i}", "qty": 1} for i in range(5)], "n": 7}


def _wait_replicas(urls: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = 0
        for url in urls:
            client = redis.Redis.from_url(url)
            try:
                up += client.info("replication").get("master_link_status") == "up"
            finally:
                client.close()
        if up == len(urls) // 2:
            return
        time.sleep(0.2)
    raise RuntimeError("Redis Cluster replicas did not sync")


def run(ctx: Context) -> list[Result]:
    """Measure the two ratios of the Redis Cluster sessions work."""
    from djscale.cache.l2 import RedisL2

    cluster = ctx.factory({"project": {"name": "benchsess"},
                           "redis": {"mode": "cluster", "masters": 3,
                                     "replicas_per_master": 1}},
                          parts=("redis",), name="bench-sessions-rc")
    urls = [f"redis://{h}:{p}" for h, p in (cluster.address(f"redis-{i}")
                                             for i in range(1, 7))]
    _wait_replicas(urls)
    l2 = RedisL2(urls, cluster=True)
    raw = pickle.dumps(SESSION, pickle.HIGHEST_PROTOCOL)
    keys = [f"benchsess:{i}" for i in range(64)]  # spread over the three masters
    turn = iter(range(10**12))

    def key() -> str:
        return keys[next(turn) % len(keys)]

    def acked() -> object:
        return l2.write_acked(key(), raw, 300, replicas=1, ack_timeout=0.1, retry_for=5)

    def unacked() -> object:
        return l2.write_acked(key(), raw, 300, replicas=0, ack_timeout=0.1, retry_for=5)

    def plain() -> object:
        return l2.set(key(), raw, 300)

    try:
        acks = [acked() for _ in range(len(keys))]
        if acks != [1] * len(keys):  # otherwise this would not measure WAIT at all
            raise RuntimeError(f"replicas did not acknowledge: {sorted(set(map(str, acks)))}")
        number = 300 if ctx.quick else 2000
        rounds = 3 if ctx.quick else 7
        t = interleaved({"acked": acked, "unacked": unacked, "set": plain},
                        number=number, rounds=rounds)
        ms = 1e3
        return [
            Result(TOPIC, "session cache write: SET + WAIT 1 vs SET (same path)",
                   value=t["acked"] * ms, baseline=t["unacked"] * ms, unit="ms/write",
                   baseline_name="write_acked(replicas=0)", higher_is_better=False,
                   notes=f"per write: {t['acked'] * ms:.3f} ms with WAIT, "
                         f"{t['unacked'] * ms:.3f} ms without; {len(raw)}-byte session, "
                         "3 masters + 3 replicas on loopback"),
            Result(TOPIC, "djscale.sessions cache write vs cached_db's TieredCache.set",
                   value=t["acked"] * ms, baseline=t["set"] * ms, unit="ms/write",
                   baseline_name="RedisL2.set (cluster pipeline)", higher_is_better=False,
                   notes=f"per write: {t['acked'] * ms:.3f} ms acknowledged, "
                         f"{t['set'] * ms:.3f} ms plain set"),
        ]
    finally:
        l2.close()
        cluster.down()
