"""Reads of a sharded model use that shard's replicas through the replica router's logic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

READ = """
import time
from djscale.sharding import shardmap
from tests.shardapp.models import ShardedUser
deadline = time.monotonic() + 20
while True:
    qs = ShardedUser.objects.filter(user_id=5)
    alias, found = qs.db, qs.exists()
    if (alias == "shard1_replica1" and found) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("READ", alias, found)
"""

WRITE = """
import io
from django.core.management import call_command
from tests.shardapp.models import ShardedUser
call_command("migrate", verbosity=0)
out = io.StringIO()
call_command("migrate_shards", stdout=out)
print(out.getvalue())
u = ShardedUser.objects.create(user_id=5, email="five@example.com")
print("WROTE", u._state.db)
"""


def _django(cluster_dir: Path, *args: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.shardapp.cluster_settings",
           "DJSCALE_TOPOLOGY": str(cluster_dir / "djscale.toml"),
           "DJSCALE_STATE_DIR": str(cluster_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_sharded_reads_go_to_a_caught_up_replica_of_their_shard(
        djscale_cluster_factory: ClusterFactory) -> None:
    cluster = djscale_cluster_factory(
        {"project": {"name": "shardrep"}, "postgres": {"database": "sr"},
         "shards": [{"name": "shard1", "replicas": 1}]},
        parts=("postgres", "redis"), name="shard-replicas")
    state = Path(cluster.state_dir)
    wrote = _django(state, "shell", "-c", WRITE)
    assert "shard1: applied" in wrote and "WROTE shard1\n" in wrote
    assert "READ shard1_replica1 True" in _django(state, "shell", "-c", READ)
