"""The replica probe survives a frozen server: bounded waits, no thread pile-up.

A frozen replica (paused VM, stopped process, partition that drops packets) accepts
nothing and answers nothing; ``statement_timeout`` is enforced by the server, so only a
client-side bound keeps the probe, and with it the router's view of replica health, alive.
"""

from __future__ import annotations

import threading

import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.db import config
from djscale.db.pool import ReplicaPool
from djscale.db.probe import ANSWER_SECONDS, Prober
from tests.integration.helpers import frozen

pytestmark = pytest.mark.integration

FROZEN = "default_replica2"


def _refresh(prober: Prober, pool: ReplicaPool) -> None:
    worker = threading.Thread(target=prober.refresh, args=(pool,), daemon=True)
    worker.start()
    worker.join(ANSWER_SECONDS * 2 + 5)
    assert not worker.is_alive(), "a probe round blocked on a frozen replica"


def _probe_threads() -> list[str]:
    # Only this test probes: conftest.py stops the router's own probe around every test.
    return [t.name for t in threading.enumerate() if t.name == f"djscale-probe-{FROZEN}"]


def test_a_frozen_replica_is_reported_down_and_never_blocks_the_probe(
        djscale_cluster: LocalCluster) -> None:
    pool = ReplicaPool(config.group("default"))
    prober = Prober()
    try:
        _refresh(prober, pool)  # connections open, both replicas measured
        assert {a: h.up for a, h in pool.health().items()} == {
            "default_replica1": True, FROZEN: True}
        with frozen(djscale_cluster, "pg-default-replica2"):
            for _ in range(2):
                _refresh(prober, pool)
                health = pool.health()
                assert health["default_replica1"].up
                assert not health[FROZEN].up
                assert "no answer" in (health[FROZEN].error or "")
                assert pool.usable() == ["default_replica1"]
            assert len(_probe_threads()) == 1, "a second probe piled up behind the stuck one"

        def recovered() -> bool:  # up, and (once it replayed what it missed) usable again
            _refresh(prober, pool)
            return sorted(pool.usable()) == ["default_replica1", FROZEN]

        assert wait_until(recovered, timeout=30, interval=0.2), pool.health()
    finally:
        prober.close()
