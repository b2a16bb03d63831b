"""A separate OS process using TieredCache, driven by JSON lines on stdin.

``python -m tests.integration.cache_support.worker <redis-url> [<L1 timeout>]`` configures
Django with one TieredCache on that Redis, waits until its invalidation listener is
subscribed, prints ``{"ready": pid}`` and then answers one JSON line per command:

- ``{"op": "set", "key": k, "value": v}`` / ``get`` / ``delete`` / ``stats``
- ``{"op": "raw_delete", "key": k}``: delete in Redis *without* publishing (a control)
- ``{"op": "watch", "key": k, "timeout": s}``: get every 0.5 ms until it misses; answer
  ``{"watching": true}`` after the first :data:`WATCHING_AFTER` hits, and at the miss
  ``{"t": monotonic time of the first miss, "polls": n, "l1_hits": h}``
- ``{"op": "delete_synced", "key": k, "timeout": s}``: delete, then ``wait_for_l1``;
  answer ``{"synced": bool, "waited": seconds}``
- ``{"op": "hold", "seconds": s}``: hold the L1 store's lock for s seconds in a thread (the
  listener cannot apply evictions meanwhile, as when it is starved of CPU); answer
  ``{"holding": true}`` once held. L1 hits do not take the lock.
- ``{"op": "clear"}``: ``cache.clear()`` (FLUSHDB); ``{"op": "origin"}``: the listener's id
- ``{"op": "stampede", "key": k, "threads": n, "counter": c, "start_at": t}``: n threads
  call one ``@cached`` function at monotonic time t; each computation INCRs Redis key c
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

WATCHING_AFTER = 20
"""``watch`` says it is watching once this many gets in a row found the key."""


def main() -> None:
    url = sys.argv[1]
    l1_timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    import django
    from django.conf import settings

    settings.configure(
        CACHES={"default": {"BACKEND": "djscale.cache.TieredCache", "LOCATION": url,
                            "KEY_PREFIX": "xproc", "OPTIONS": {"L1_TIMEOUT": l1_timeout}}},
        INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.core.cache import caches

    from djscale.cache import TieredCache, cached

    cache = caches["default"]
    assert isinstance(cache, TieredCache)

    bus = cache.bus
    assert bus is not None and bus.wait_connected(10), "listener did not subscribe"

    @cached(timeout=60, name="stampede")
    def slow(key: str, counter: str) -> str:
        cache.l2.client.incr(counter)
        time.sleep(0.3)
        return f"value-of-{key}"

    def reply(obj: object) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": os.getpid()})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "set":
            cache.set(cmd["key"], cmd["value"], cmd.get("timeout", 300))
            reply({"ok": True})
        elif op == "get":
            reply({"value": cache.get(cmd["key"]), "l1_hits": cache.l1.hits})
        elif op == "delete":
            t = time.monotonic()
            deleted = cache.delete(cmd["key"])
            reply({"t": t, "deleted": deleted})
        elif op == "delete_synced":
            cache.delete(cmd["key"])
            t = time.monotonic()
            synced = cache.wait_for_l1(cmd.get("timeout"))
            reply({"synced": synced, "waited": time.monotonic() - t})
        elif op == "hold":
            held = threading.Event()

            def hold(seconds: float, flag: threading.Event) -> None:
                with cache.l1._lock:
                    flag.set()
                    time.sleep(seconds)

            threading.Thread(target=hold, args=(cmd["seconds"], held), daemon=True).start()
            held.wait(5)
            reply({"holding": held.is_set()})
        elif op == "origin":
            reply({"origin": bus.origin.decode()})
        elif op == "clear":
            cache.clear()
            reply({"ok": True})
        elif op == "raw_delete":
            full = cache.make_key(cmd["key"])
            reply({"deleted": cache.l2.client.delete(full)})
        elif op == "watch":
            deadline = time.monotonic() + cmd.get("timeout", 3.0)
            polls = 0
            while time.monotonic() < deadline:
                polls += 1
                if cache.get(cmd["key"]) is None:
                    reply({"t": time.monotonic(), "polls": polls, "l1_hits": cache.l1.hits})
                    break
                if polls == WATCHING_AFTER:
                    reply({"watching": True})
                time.sleep(0.0005)
            else:
                reply({"t": None, "polls": polls, "l1_hits": cache.l1.hits})
        elif op == "stampede":
            results: list[str] = []
            lock = threading.Lock()

            def call(c: dict[str, Any], out: list[str], guard: threading.Lock) -> None:
                time.sleep(max(0.0, c["start_at"] - time.monotonic()))
                value = slow(c["key"], c["counter"])
                with guard:
                    out.append(value)

            threads = [threading.Thread(target=call, args=(cmd, results, lock))
                       for _ in range(cmd["threads"])]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            reply({"results": results})
        elif op == "stats":
            reply(cache.stats())
        elif op == "quit":
            reply({"bye": True})
            return
        else:
            reply({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    main()
