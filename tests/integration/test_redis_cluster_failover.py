"""A Redis Cluster master failover under load loses no session and fails no request.

A real Redis Cluster (3 masters, 1 replica each, ``cluster-node-timeout`` 2 s) backs the
sessions (``djscale.sessions`` over a TieredCache alias without L1, the database on the
shared test cluster's primary) and a rate limiter (:class:`RateLimiter` on the same
Redis Cluster). Worker threads drive real Django views through the test client: each
owns a few logged-in sessions whose counter it increments and reads back, and one
rate-limited client id. Once every limited client has used up its window, the master
that holds slot 0 is SIGKILLed; the load goes on through the failover until its replica
is promoted and a little after. Then:

- every request was answered: 200, or 429 from the limiter; no 5xx, no exception;
- every session reads back with exactly the data its client wrote (not an older version,
  which is what a cache write lost with the dead master would serve), through the app
  and in Redis itself;
- the rate limit did not reset: clients whose window lives on the dead master got at
  most ``TOLERANCE`` more requests admitted after the crash, and are refused again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from redis.cluster import key_slot

from djscale.cluster import LocalCluster
from djscale.cluster.redis import cluster_ok
from djscale.services.ratelimit import RateLimiter
from djscale.sessions import CACHE_WRITES
from djscale.testing import ClusterFactory
from tests.integration.cache_support.redis_cluster import boot_redis_cluster

pytestmark = pytest.mark.integration

LIMIT = 40            # requests per client per WINDOW
WINDOW = 300.0        # longer than the test: admissions never expire during it
TOLERANCE = 2         # extra admissions a master crash may cost (docs/cache.md)
THREADS = 6
SESSIONS_PER_THREAD = 4
ALIAS = "failover_sessions"

_limiter: dict[str, Any] = {}


# ---------------------------------------------------------------------- views under test

def login(request: HttpRequest, name: str) -> JsonResponse:
    request.session.cycle_key()
    request.session["user"] = name
    request.session["n"] = 0
    return JsonResponse({"user": name})


def bump(request: HttpRequest) -> JsonResponse:
    n = int(request.session["n"]) + 1
    request.session["n"] = n
    return JsonResponse({"user": request.session["user"], "n": n})


def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.session.get("user"), "n": request.session.get("n")})


def limited(request: HttpRequest, client_id: str) -> JsonResponse:
    future = asyncio.run_coroutine_threadsafe(_limiter["limiter"].hit(client_id),
                                              _limiter["loop"])
    decision = future.result(timeout=30)
    return JsonResponse({"allowed": decision.allowed},
                        status=200 if decision.allowed else 429)


urlpatterns = [
    path("login/<str:name>/", login),
    path("bump/", bump),
    path("read/", read),
    path("limited/<str:client_id>/", limited),
]


# ---------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def redis_cluster(djscale_cluster_factory: ClusterFactory) -> Iterator[
        tuple[LocalCluster, list[str]]]:
    """3 masters + 3 replicas, stopped when the module ends (even after a failure)."""
    cluster, urls = boot_redis_cluster(djscale_cluster_factory, "failover-rc", replicas=1)
    try:
        _wait_replicas_in_sync(urls)
        yield cluster, urls
    finally:
        cluster.down()


@pytest.fixture
def app(redis_cluster: tuple[LocalCluster, list[str]]) -> Iterator[None]:
    """Sessions and the rate limiter of the views on the Redis Cluster."""
    _, urls = redis_cluster
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="limiter-loop", daemon=True)
    runner.start()
    _limiter.update(loop=loop, limiter=RateLimiter.from_url(
        ",".join(urls), limit=LIMIT, window=WINDOW, prefix="failover:rl:", retry_for=15))
    cache = {"BACKEND": "djscale.cache.TieredCache", "LOCATION": urls,
             "KEY_PREFIX": "failover:sess",
             "OPTIONS": {"CLUSTER": True, "L1_MAX_ENTRIES": 0}}
    try:
        with override_settings(CACHES={**settings.CACHES, ALIAS: cache},
                               SESSION_ENGINE="djscale.sessions", SESSION_CACHE_ALIAS=ALIAS,
                               DJSCALE_SESSIONS={"RETRY_FOR": 15, "ACK_TIMEOUT": 0.2},
                               ROOT_URLCONF=__name__):
            try:
                yield
            finally:
                caches[ALIAS].l2.close()  # type: ignore[attr-defined]
    finally:
        asyncio.run_coroutine_threadsafe(_limiter["limiter"].aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
        _limiter.clear()


# ---------------------------------------------------------------------- helpers

def _node(url: str) -> redis.Redis:
    host, port = url.removeprefix("redis://").split(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=2, socket_connect_timeout=1)


def _cluster_nodes(url: str) -> list[dict[str, Any]]:
    """``CLUSTER NODES`` of the node at ``url``: id, address, flags, master id, slots."""
    with _node(url) as client:
        raw = client.execute_command("CLUSTER NODES")
    text = raw.decode() if isinstance(raw, bytes) else raw
    if isinstance(text, dict):  # redis-py parses it into {address: info}
        return [{"id": info["node_id"], "addr": addr.split("@")[0],
                 "flags": info["flags"].split(","), "master": info["master_id"],
                 "slots": info.get("slots", [])} for addr, info in text.items()]
    nodes = []
    for line in text.splitlines():
        f = line.split()
        nodes.append({"id": f[0], "addr": f[1].split("@")[0], "flags": f[2].split(","),
                      "master": f[3], "slots": [s.split("-") for s in f[8:]]})
    return nodes


def _wait_replicas_in_sync(urls: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        linked = 0
        for url in urls:
            with _node(url) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                linked += 1
        if linked == 3:
            return
        time.sleep(0.1)
    raise AssertionError("the Redis Cluster replicas did not sync in time")


def _slots_of(node: dict[str, Any]) -> set[int]:
    slots: set[int] = set()
    for rng in node["slots"]:
        lo, hi = (int(rng[0]), int(rng[-1])) if isinstance(rng, list | tuple) else \
            (int(str(rng).split("-")[0]), int(str(rng).split("-")[-1]))
        slots.update(range(lo, hi + 1))
    return slots


def _session_writes() -> dict[str, float]:
    """``djscale_session_cache_writes_total`` by result, in this process."""
    return {r: CACHE_WRITES.labels(r)._value.get() for r in ("acked", "unacked", "failed")}


@dataclass
class Worker:
    """One load thread: its sessions (client + expected counter) and limited client."""

    index: int
    limited_id: str
    clients: list[Client] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    admitted: int = 0
    refused: int = 0
    admitted_after_kill: int = 0
    refused_after_kill: int = 0
    bumps_after_kill: int = 0

    def call(self, client: Client, url: str, ok: tuple[int, ...] = (200,)) -> Any:
        self.requests += 1
        try:
            response = client.get(url)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted
            self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
            return None
        if response.status_code not in ok:
            self.failures.append(f"{url}: HTTP {response.status_code}")
            return None
        return response

    def login(self) -> None:
        for j in range(SESSIONS_PER_THREAD):
            client = Client()
            if self.call(client, f"/login/u{self.index}-{j}/") is not None:
                self.clients.append(client)
                self.expected.append(0)

    def run(self, stop: threading.Event, killed: threading.Event) -> None:
        try:
            while not stop.is_set():
                for j, client in enumerate(self.clients):
                    got = self.call(client, "/bump/")
                    if got is not None:
                        self.expected[j] += 1
                        self.bumps_after_kill += killed.is_set()
                        if got.json()["n"] != self.expected[j]:
                            self.failures.append(f"bump: n={got.json()['n']}, "
                                                 f"expected {self.expected[j]}")
                            self.expected[j] = got.json()["n"]
                    got = self.call(client, "/read/")
                    if got is not None and got.json()["n"] != self.expected[j]:
                        self.failures.append(f"read: n={got.json()['n']}, "
                                             f"expected {self.expected[j]}")
                after = killed.is_set()
                got = self.call(self.clients[0] if self.clients else Client(),
                                f"/limited/{self.limited_id}/", ok=(200, 429))
                if got is not None:
                    allowed = got.status_code == 200
                    self.admitted += allowed
                    self.refused += not allowed
                    if after:
                        self.admitted_after_kill += allowed
                        self.refused_after_kill += not allowed
                time.sleep(0.002)
        finally:
            connections.close_all()


# ---------------------------------------------------------------------- the test

@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_master_failover_under_load_loses_no_session_and_fails_no_request(
        redis_cluster: tuple[LocalCluster, list[str]], app: None) -> None:
    cluster, urls = redis_cluster
    nodes = _cluster_nodes(urls[0])
    victim = next(n for n in nodes if "master" in n["flags"] and 0 in _slots_of(n))
    victim_slots = _slots_of(victim)
    victim_name = f"redis-{[u.removeprefix('redis://') for u in urls].index(victim['addr']) + 1}"
    replica = next(n for n in nodes if n["master"] == victim["id"])
    survivor = next(u for u in urls if u.removeprefix("redis://") not in
                    (victim["addr"],))

    # Limited clients: two thirds on the master that will die, the rest elsewhere.
    limiter: RateLimiter = _limiter["limiter"]
    ids: list[str] = []
    i = 0
    while len(ids) < THREADS:
        cid = f"client-{i}"
        on_victim = key_slot(limiter.key(cid).encode()) in victim_slots
        if on_victim == (len(ids) % 3 != 2):
            ids.append(cid)
        i += 1
    workers = [Worker(index=k, limited_id=cid) for k, cid in enumerate(ids)]
    for w in workers:
        w.login()
    assert all(len(w.clients) == SESSIONS_PER_THREAD for w in workers), \
        [f for w in workers for f in w.failures]

    stop, killed = threading.Event(), threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop, killed), name=f"load-{w.index}")
               for w in workers]
    for t in threads:
        t.start()
    try:
        # Let every limited client use up its window first, so a reset would show.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(w.refused for w in workers):
            time.sleep(0.05)
        assert all(w.admitted == LIMIT for w in workers), [w.admitted for w in workers]

        before_kill = _session_writes()
        killed.set()
        kill_at = time.monotonic()
        cluster.stop_service(victim_name, crash=True)  # SIGKILL
        promoted = None
        while time.monotonic() < kill_at + 30:
            try:
                view = {n["id"]: n for n in _cluster_nodes(survivor)}
                host, port = survivor.removeprefix("redis://").split(":")
                state_ok = cluster_ok(host, int(port))
            except redis.RedisError:
                view, state_ok = {}, False
            if state_ok and "master" in view.get(replica["id"], {}).get("flags", []):
                promoted = time.monotonic() - kill_at
                break
            time.sleep(0.1)
        assert promoted is not None, "the replica of the killed master was not promoted"
        time.sleep(1.5)  # keep the load on the promoted master for a while
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    failures = [f for w in workers for f in w.failures]
    requests = sum(w.requests for w in workers)
    assert failures == [], f"{len(failures)} of {requests} requests failed: {failures[:10]}"
    assert sum(w.bumps_after_kill for w in workers) > 0
    # Before the crash every session write was held by a replica; none was given up.
    assert before_kill["acked"] > 0 and before_kill["unacked"] == before_kill["failed"] == 0, \
        before_kill
    assert _session_writes()["failed"] == 0

    # Every session, read back through the app and straight from Redis and the database.
    cache = caches[ALIAS]
    on_victim = 0
    for w in workers:
        for client, expected in zip(w.clients, w.expected, strict=True):
            got = client.get("/read/")
            assert got.status_code == 200
            assert got.json() == {"user": got.json()["user"], "n": expected}
            assert got.json()["user"].startswith(f"u{w.index}-")
            key = client.cookies[settings.SESSION_COOKIE_NAME].value
            full = cache.make_key(f"django.contrib.sessions.cached_db{key}")
            on_victim += key_slot(full.encode()) in victim_slots
            assert cache.get(f"django.contrib.sessions.cached_db{key}")["n"] == expected
            row = Session.objects.using("default").get(session_key=key)
            assert row.get_decoded()["n"] == expected
    assert on_victim > 0, "no session lived on the killed master: the test proved nothing"

    # The rate limit survived: no fresh window on the promoted master.
    for w in workers:
        assert w.admitted_after_kill <= TOLERANCE, (w.limited_id, w.admitted_after_kill)
        assert w.refused_after_kill > 0, w.limited_id
    writes = {k: int(v - before_kill[k]) for k, v in _session_writes().items()}
    print(f"\nsession cache writes before the kill {before_kill}, after {writes}")
    print(f"{requests} requests, 0 failed; replica promoted {promoted:.1f} s after the "
          f"SIGKILL; {on_victim} of {THREADS * SESSIONS_PER_THREAD} sessions on the killed "
          f"master; admitted after the kill per client: "
          f"{[w.admitted_after_kill for w in workers]}")
