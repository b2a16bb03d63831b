"""The whole cluster across "machines": one network namespace per host on a private bridge.

Hosts: ``db`` (primary + 2 shards), ``db-replica1`` and ``db-replica2`` (a streaming
replica each), ``cache`` (Redis,
also the Celery broker), ``app1`` and ``app2`` (gunicorn; ``app2`` also runs the Celery
worker and the outbox relay) and ``lb`` (nginx). The test runner is the root namespace
(the operator's machine, on the bridge too) and talks to the cluster through the load
balancer's address only, except to pause the replica and to look at the shard databases
directly. Inside a namespace ``127.0.0.1`` is that host's own loopback, so anything that
still assumed "every service is on localhost" fails here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import ManagedProcess, in_netns, wait_until
from djscale.errors import ClusterError
from djscale.testing import ClusterFactory
from djscale.testing.netns import HostNetwork, unavailable_reason
from djscale.topology import parse
from tests.integration.helpers import replay_paused, request, sql

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("db", "db-replica1", "db-replica2", "cache", "app1", "app2", "lb")
PLACEMENT = {  # service -> host it must run on
    "pg-default": "db", "pg-shard1": "db", "pg-shard2": "db",
    "pg-default-replica1": "db-replica1", "pg-default-replica2": "db-replica2",
    "redis": "cache",
    "app-1": "app1", "app-2": "app2", "celery-1": "app2", "relay": "app2", "lb": "lb",
}

REPLICAS = ("pg-default-replica1", "pg-default-replica2")

_reason = unavailable_reason()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(_reason is not None, reason=_reason or "")]


def _our_namespaces(index: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(f"djs{index}-")]


@pytest.fixture(scope="module")
def net() -> Iterator[HostNetwork]:
    with HostNetwork(HOSTS) as network:
        yield network
    assert _our_namespaces(network.index) == [], "namespaces left behind"


@pytest.fixture(scope="module")
def cluster(net: HostNetwork, djscale_cluster_factory: ClusterFactory,
            ) -> Iterator[LocalCluster]:
    topology = {
        "project": {"name": "multihost", "pythonpath": str(ROOT),
                    "settings": "tests.multihost.settings", "wsgi": "tests.wsgi:application"},
        "hosts": net.hosts_table(),
        "postgres": {"host": "db", "database": "multihost", "replicas": 2,
                     "replica_hosts": ["db-replica1", "db-replica2"], "max_lag_seconds": 2},
        "shards": [{"name": "shard1"}, {"name": "shard2"}],
        "redis": {"host": "cache"},
        "app": {"servers": 2, "workers": 2, "hosts": ["app1", "app2"]},
        "lb": {"kind": "nginx", "host": "lb"},
        "celery": {"workers": 1, "concurrency": 2, "app": "tests.eventsapp.celery:app",
                   "hosts": ["app2"], "relay": True},
    }
    booted = djscale_cluster_factory(
        topology, parts=("postgres", "redis", "migrate", "app", "lb", "celery"),
        name="multihost")
    try:
        yield booted
    finally:
        booted.down(purge=True)  # before the namespaces go


def test_every_service_runs_in_its_hosts_namespace_on_its_address(
        net: HostNetwork, cluster: LocalCluster) -> None:
    records = {p.name: p for p in cluster.processes()}
    assert set(PLACEMENT) <= set(records)
    for service, host in PLACEMENT.items():
        proc = records[service]
        assert proc.netns == net.netns(host), service
        assert proc.pid in net.pids(host), f"{service} is not in {net.netns(host)}"
        # The same kernel object as the namespace's, not merely a pid in a list.
        assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat(
            f"/run/netns/{net.netns(host)}").st_ino
        if proc.port:
            assert proc.host == net.address(host), service
    # Nothing of the cluster runs in the test runner's namespace.
    own = os.stat("/proc/self/ns/net").st_ino
    assert all(os.stat(f"/proc/{p.pid}/ns/net").st_ino != own
               for p in records.values() if p.alive())


def test_a_client_reads_its_own_write_across_hosts_while_the_replicas_are_paused(
        net: HostNetwork, cluster: LocalCluster) -> None:
    db = f"{net.address('db')}:"
    replicas = {"default_replica1": f"{net.address('db-replica1')}:",
                "default_replica2": f"{net.address('db-replica2')}:"}
    # Every app process (2 servers x 2 workers) must have measured the replicas while
    # they were caught up, i.e. served a read from one (see test_replicas_http: a replica
    # first seen while behind is rightly skipped).
    on_replicas: set[tuple[str, int]] = set()

    def all_processes_read_from_replicas() -> bool:
        answer = request(cluster, "GET", "/mh/notes/0")
        assert answer.status == 200
        if answer.json()["db"] in replicas:
            on_replicas.add((answer.json()["server"], answer.json()["pid"]))
        return len(on_replicas) == 4

    assert wait_until(all_processes_read_from_replicas, 30, interval=0.01), on_replicas
    with replay_paused(cluster, REPLICAS):
        created = request(cluster, "POST", "/mh/notes", body={"text": "mine"})
        assert created.status == 201, created
        assert created.json()["db_address"].startswith(db)
        cookie = created.headers["set-cookie"].split(";")[0]
        assert cookie.startswith("djscale_lsn=")
        path = f"/mh/notes/{created.json()['id']}"
        mine = request(cluster, "GET", path, headers={"Cookie": cookie}).json()
        theirs = request(cluster, "GET", path).json()
    assert mine["found"] and mine["db"] == "default" and mine["db_address"].startswith(db)
    # Another client reads from a paused replica on its own host: the row is not there.
    assert theirs["db_address"].startswith(replicas[theirs["db"]])
    assert not theirs["found"]


def test_rows_land_on_their_shard_database_over_the_network(
        net: HostNetwork, cluster: LocalCluster) -> None:
    placed: dict[str, set[int]] = {"shard1": set(), "shard2": set()}
    for user_id in range(1001, 1021):
        answer = request(cluster, "POST", "/mh/users", body={"user_id": user_id})
        body = answer.json()
        assert answer.status == 201, body
        assert body["db"] == body["expected"]
        assert body["db_address"].startswith(f"{net.address('db')}:")
        placed[body["db"]].add(user_id)
    assert placed["shard1"] and placed["shard2"]  # 20 keys spread over both
    for alias, expected in placed.items():
        rows = sql(cluster, f"pg-{alias}",
                    "SELECT user_id FROM shardapp_shardeduser WHERE user_id > 1000")
        assert {r[0] for r in rows} == expected, alias


def test_a_write_on_one_app_host_evicts_the_value_from_the_other_hosts_l1(
        cluster: LocalCluster) -> None:
    assert request(cluster, "POST", "/mh/cache/colour", body={"value": "red"}).status == 201
    seen: set[str] = set()
    for _ in range(12):  # fill the L1 of every app process with "red"
        answer = request(cluster, "GET", "/mh/cache/colour")
        body = answer.json()
        assert answer.status == 200 and body["value"] == "red"
        seen.add(body["server"])
    assert seen == {"app-1", "app-2"}

    answer = request(cluster, "POST", "/mh/cache/colour", body={"value": "blue"})
    assert answer.status == 201
    writer = answer.json()["server"]

    # L1 entries live 300 s here: only the invalidation bus (through Redis on the cache
    # host) can make the other host answer "blue" now.
    answers: list[tuple[str, str]] = []

    def all_blue() -> bool:
        batch = [request(cluster, "GET", "/mh/cache/colour").json() for _ in range(8)]
        answers[:] = [(b["server"], b["value"]) for b in batch]
        return all(v == "blue" for _, v in answers) and len({s for s, _ in answers}) == 2

    assert wait_until(all_blue, 5, interval=0.2), answers
    assert any(s != writer for s, _ in answers)


def test_an_event_published_on_app1_is_consumed_by_the_worker_on_app2(
        cluster: LocalCluster) -> None:
    closed: list[int] = []
    for _ in range(6):  # the LB alternates: find a close served by app-1
        opened = request(cluster, "POST", "/mh/accounts")
        assert opened.status == 201
        created = opened.json()
        closing = request(cluster, "POST", f"/mh/accounts/{created['id']}/close")
        body = closing.json()
        assert closing.status == 202, body
        closed.append(created["id"])
        if body["server"] == "app-1":
            break
        request(cluster, "GET", "/mh/accounts/0")  # shift the round robin by one
    else:
        pytest.fail("no close was served by app-1")

    def consumed() -> bool:
        counts = [request(cluster, "GET", f"/mh/accounts/{pk}").json()["account"]["closed_count"]
                  for pk in closed]
        return all(c == 1 for c in counts)

    assert wait_until(consumed, 20, interval=0.25)
    log = Path(cluster.process("celery-1").log).read_text(errors="replace")
    assert "eventsapp.close_account" in log or "succeeded" in log


def test_app_hosts_talk_only_to_hosts_of_the_private_network(
        net: HostNetwork, cluster: LocalCluster) -> None:
    subnet = net.gateway.rsplit(".", 1)[0] + "."
    # Traffic first (tests run in any order): app processes connect on their first requests.
    for _ in range(8):
        assert request(cluster, "GET", "/mh/notes/0").status == 200
    for host in ("app1", "app2", "lb"):
        out = subprocess.run([*in_netns(net.netns(host)), "ss", "-Htn"],
                             capture_output=True, text=True, check=True).stdout
        peers = {line.split()[4].rsplit(":", 1)[0] for line in out.splitlines()}
        assert peers or host == "lb", f"no TCP connections on {host}"  # DB, Redis at least
        assert all(p.startswith(subnet) for p in peers), (host, peers)


def test_a_missing_namespace_is_a_clear_error(tmp_path: Path) -> None:
    topology = parse({"hosts": {"cache": {"address": "10.254.254.2", "netns": "djs-missing"}},
                      "redis": {"host": "cache"}})
    with pytest.raises(ClusterError, match="namespace 'djs-missing' does not exist"):
        LocalCluster(topology, tmp_path).up(only=("redis",))


def test_an_address_of_another_machine_is_a_clear_error(tmp_path: Path) -> None:
    topology = parse({"hosts": {"cache": {"address": "10.254.254.2"}},
                      "redis": {"host": "cache"}})
    with pytest.raises(ClusterError, match=r"redis is placed on 10\.254\.254\.2, which this "
                       "machine cannot listen on"):
        LocalCluster(topology, tmp_path).up(only=("redis",))


def test_a_process_enters_its_namespace_then_drops_to_its_user() -> None:
    proc = ManagedProcess(name="pg", kind="postgres", cmd=["postgres", "-D", "x"], log="l",
                          user="postgres", netns="djs1-db")
    cmd, user_kwargs = proc.command()
    assert cmd == ["nsenter", "--net=/run/netns/djs1-db", "setpriv", "--reuid=postgres",
                   "--regid=postgres", "--init-groups", "postgres", "-D", "x"]
    assert user_kwargs == {}
    plain = ManagedProcess(name="pg", kind="postgres", cmd=["postgres"], log="l")
    assert plain.command() == (["postgres"], {})


def test_host_network_removes_everything_even_when_the_body_fails() -> None:
    network = HostNetwork(["a", "b"])
    with pytest.raises(RuntimeError), network:
        assert len(_our_namespaces(network.index)) == 2
        raise RuntimeError("boom")
    assert _our_namespaces(network.index) == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"djs{network.index}br" not in links and f"djs{network.index}v0" not in links


def test_leftovers_of_a_crashed_run_are_removed_by_the_next_one() -> None:
    crashed = HostNetwork(["x"])
    crashed.__enter__()  # never exited: as if the process running it was killed
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that is gone, as the crashed run's is
    Path(f"/run/djscale-netns/{crashed.index}.pid").write_text(str(child.pid))
    try:
        with HostNetwork(["y"]):
            assert f"djs{crashed.index}-x" not in _our_namespaces(crashed.index)
    finally:
        crashed.close()
    assert _our_namespaces(crashed.index) == []
