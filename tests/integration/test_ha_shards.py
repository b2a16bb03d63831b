"""One shard of a sharded topology fails over (Patroni) while the other shards keep serving.

Two shard groups, each a Patroni leader and one replica (``ha = "patroni"``, asynchronous),
one etcd member for both (a Patroni scope per group); the main database is a plain
primary (it holds the shard map). A Django process of ``tests.shardapp`` writes a
``ShardedUser`` and reads it back in a loop, each operation inside Django's request
signals like a request of an app server (so a broken connection is dropped before the
next one), while shard1's leader node is killed (Patroni and PostgreSQL SIGKILLed) and
brought back, through the same steps as ``djscale chaos kill-primary-node shard1``.

Shard2 never notices: every read and write on it succeeds, none slower than a second,
and every acknowledged write is on it. Shard1's writes fail fast during the election and
succeed again within ttl + 5 s of the fault, without restarting the writer; its old leader
rejoins as a replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from djscale.chaos import primary
from djscale.chaos.scenarios import ChaosReport, _Fault
from djscale.cluster import LocalCluster, ha
from djscale.cluster import postgres as pg
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TTL = 20

SETUP = """
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("migrate_shards", verbosity=0)
print("READY")
"""

# One line of JSON per operation: what a request of an app server would have seen.
WRITER = """
import json, os, time
from django.core.signals import request_finished, request_started
from djscale.sharding import shard_for, shardmap
from tests.shardapp.models import ShardedUser

key = int(os.environ["HA_FIRST_KEY"])
while not os.path.exists(os.environ["HA_STOP_FILE"]):
    key += 1
    shard = shardmap.current().alias_for(shard_for(key))
    for op in ("write", "read"):
        started = time.time()
        request_started.send(sender=None)
        error = ""
        try:
            if op == "write":
                ShardedUser.objects.create(user_id=key, email=f"u{key}@example.com")
            else:
                ShardedUser.objects.filter(user_id=key).exists()
        except Exception as exc:  # what the app server would answer 503 (or 500) for
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[-1] if text else ''}"[:200]
        finally:
            request_finished.send(sender=None)
        print(json.dumps({"t": started, "s": time.time() - started, "shard": shard,
                          "key": key, "op": op, "error": error}), flush=True)
    time.sleep(0.01)
"""

# Reads on a replica alias, one per "request", saying whether a standby answered.
READER = """
import json, os, time
from django.core.signals import request_finished, request_started
from django.db import connections

alias = os.environ["HA_ALIAS"]
while not os.path.exists(os.environ["HA_STOP_FILE"]):
    request_started.send(sender=None)
    line = {"t": time.time(), "standby": None, "port": 0, "error": ""}
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), inet_server_port()")
            line["standby"], line["port"] = cursor.fetchone()
    except Exception as exc:
        line["error"] = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        request_finished.send(sender=None)
    print(json.dumps(line), flush=True)
    time.sleep(0.05)
"""


def _env(cluster: LocalCluster) -> dict[str, str]:
    state = Path(cluster.state_dir)
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.shardapp.cluster_settings",
            "DJSCALE_TOPOLOGY": str(state / "djscale.toml"),
            "DJSCALE_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}


def _child(cluster: LocalCluster, script: str, tmp_path: Path, name: str,
           **env: str) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
    """Run ``script`` in a Django shell on ``cluster``, with ``env`` added.

    Returns the process, the file that stops it (``HA_STOP_FILE``) and the files its
    stdout and stderr go to (a pipe nobody reads until the end would fill up and stop it).
    """
    stop = tmp_path / f"{name}.stop"
    env = {**_env(cluster), **env, "HA_STOP_FILE": str(stop)}
    out_path, err_path = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.err"
    with open(out_path, "wb") as out_file, open(err_path, "wb") as err_file:
        child = subprocess.Popen([sys.executable, "-m", "django", "shell", "-c", script],
                                 cwd=ROOT, env=env, stdout=out_file, stderr=err_file)
    return child, stop, out_path, err_path


@pytest.fixture(scope="module")
def sharded_ha(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    """Main database plain; shard1 and shard2 each a Patroni leader + replica.

    Stopped after this module (not at the end of the session) to free the machine.
    """
    shard = {"replicas": 1, "ha": "patroni", "ha_ttl": TTL}
    cluster = djscale_cluster_factory(
        {"project": {"name": "hashards"}, "postgres": {"database": "hs"},
         "shards": [{"name": "shard1", **shard}, {"name": "shard2", **shard}]},
        parts=("postgres", "redis"), name="ha-shards")
    try:
        done = subprocess.run([sys.executable, "-m", "django", "shell", "-c", SETUP], cwd=ROOT,
                              env=_env(cluster), capture_output=True, text=True, timeout=180)
        assert "READY" in done.stdout, done.stderr[-3000:]
        yield cluster
    finally:
        cluster.down(purge=True)


def _rows(cluster: LocalCluster, group: str) -> set[int]:
    host, port = ha.leader_address(cluster, group, timeout=30)
    spec = next(g for g in cluster.topology.database_groups if g.name == group)
    with pg.connect(host, port, spec.user, spec.database) as conn:
        return {int(r[0]) for r in conn.execute(b"SELECT user_id FROM shardapp_shardeduser")}


def test_one_shard_fails_over_while_the_other_keeps_serving(
        sharded_ha: LocalCluster, tmp_path: Path) -> None:
    cluster = sharded_ha
    before = {g: ha.view(cluster, g) for g in ("shard1", "shard2")}
    assert before["shard1"].leader is not None and before["shard2"].leader is not None
    writer, stop, out_path, err_path = _child(cluster, WRITER, tmp_path, "writer",
                                              HA_FIRST_KEY="1000000")
    report = ChaosReport("kill-primary-node", "", "")
    fault = _Fault(cluster, report, args=("shard1",))
    try:
        time.sleep(4.0)  # the writer runs (Django set up, both shards written)
        primary.kill_node(fault)
        primary.heal_node(fault)
        time.sleep(2.0)
    finally:
        stop.touch()
        writer.wait(timeout=60)
    out = out_path.read_text(encoding="utf-8")
    err = err_path.read_text(encoding="utf-8")
    ops: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()
                                 if line.startswith("{")]
    struck = report.fault_monotonic - time.monotonic() + time.time()  # wall clock
    lines = []
    for shard in ("shard1", "shard2"):
        mine = [o for o in ops if o["shard"] == shard]
        writes = [o for o in mine if o["op"] == "write"]
        failed = [o for o in writes if o["error"]]
        back = [o["t"] + o["s"] - struck for o in writes if not o["error"] and o["t"] >= struck]
        acked = {o["key"] for o in writes if not o["error"]}
        found = {k for k in _rows(cluster, shard) if k > 1000000}
        after = sum(o["t"] >= struck for o in mine)
        reads_failed = sum(1 for o in mine if o["op"] == "read" and o["error"])
        slowest = max((o["s"] for o in failed), default=0)
        lines.append(
            f"{shard}: {len(mine)} operations ({after} after the fault), reads failed "
            f"{reads_failed}, writes failed {len(failed)} (slowest {slowest:.2f} s), "
            f"first write after the fault {min(back, default=-1):.2f} s, "
            f"{len(acked)} acknowledged, {len(found & acked)} of them found, "
            f"{len(found - acked)} rows not acknowledged")
    print("\n".join(lines))
    failures = [o for o in ops if o["error"]]
    for o in failures[:1] + failures[-1:]:
        print(f"  {o['t'] - struck:+.2f} s {o['shard']} {o['op']}: {o['error']}")
    assert writer.returncode == 0, err[-5000:]
    print(report.text())
    assert ops, err[-3000:]
    s2 = [o for o in ops if o["shard"] == "shard2"]
    s2_after = [o for o in s2 if o["t"] >= struck]
    # Shard2 kept serving the whole time: nothing failed, nothing slow, nothing lost.
    assert s2_after and not [o for o in s2 if o["error"]], [o for o in s2 if o["error"]][:5]
    assert max(o["s"] for o in s2) < 1.0
    s2_acked = {o["key"] for o in s2 if o["op"] == "write"}
    assert s2_acked <= _rows(cluster, "shard2")
    # Shard1 failed over: refused writes were fast, writes came back within ttl + 5 s.
    s1_writes = [o for o in ops if o["shard"] == "shard1" and o["op"] == "write"]
    refused = [o for o in s1_writes if o["error"]]
    assert refused, "shard1's writes never failed: was its leader killed?"
    assert max(o["s"] for o in refused) < 1.0, max(refused, key=lambda o: o["s"])
    back = [o["t"] + o["s"] - struck for o in s1_writes if not o["error"] and o["t"] >= struck]
    assert back and min(back) <= TTL + 5, lines
    # Only a write that failed may be a row nobody acknowledged (committed, then cut off).
    s1_found = _rows(cluster, "shard1")
    failed_keys = {o["key"] for o in refused}
    assert {k for k in s1_found if k > 1000000} - {o["key"] for o in s1_writes
                                                    if not o["error"]} <= failed_keys
    assert report.rejoined and report.leader_after != before["shard1"].leader.name
    after2, before2 = ha.view(cluster, "shard2").leader, before["shard2"].leader
    assert after2 is not None and (after2.name, after2.timeline) == (before2.name,
                                                                      before2.timeline)
    rows = {r.name: r for r in cluster.status()}
    old = rows[report.target]
    assert old.healthy and old.detail.startswith("replica"), old


def test_replica_reads_leave_a_promoted_node_after_a_switchover(
        sharded_ha: LocalCluster, tmp_path: Path) -> None:
    """A replica alias's persistent connection does not stay on the node that was promoted.

    Its connection (``CONN_MAX_AGE``) sat on shard2's standby; the switchover promotes that
    node. Before djscale.db.failover.drop_promoted the alias went on reading from the new
    leader until the connection aged out (60 s), and a kill of that leader then broke every
    such alias at once (the read's retry included: the likely cause of one failed read in a
    `make ha-loop`).
    """
    cluster = sharded_ha
    reader, stop, out_path, err_path = _child(cluster, READER, tmp_path, "reader",
                                              HA_ALIAS="shard2_replica1")
    report = ChaosReport("switchover", "", "")
    fault = _Fault(cluster, report, args=("shard2",))
    try:
        time.sleep(4.0)  # Django set up, the alias connected to the standby
        primary.switchover(fault)
        primary.heal_switchover(fault)  # the old leader runs as a replica again
        healed = time.time()
        time.sleep(4.0)
    finally:
        stop.touch()
        reader.wait(timeout=60)
    assert reader.returncode == 0, err_path.read_text(encoding="utf-8")[-5000:]
    reads = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()
             if line.startswith("{")]
    struck = report.fault_monotonic - time.monotonic() + time.time()
    before = [r for r in reads if r["t"] < struck]
    late = [r for r in reads if r["t"] >= healed + 1.0]
    print(f"{len(reads)} reads: before the switchover {sum(r['standby'] for r in before)} "
          f"of {len(before)} on a standby; from 1 s after the old leader rejoined "
          f"{sum(bool(r['standby']) for r in late)} of {len(late)} on a standby "
          f"(ports {sorted({r['port'] for r in late})}); errors "
          f"{[r['error'] for r in reads if r['error']][:3]}")
    assert before and all(r["standby"] for r in before), before[-3:]
    assert not [r for r in reads if r["error"]]
    assert late and all(r["standby"] for r in late), late[:3]
