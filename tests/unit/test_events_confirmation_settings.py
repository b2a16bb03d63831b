"""Settings of the events' delivery confirmation: the result backend from_topology gives."""

from __future__ import annotations

from pathlib import Path

from djscale.settings import from_topology
from djscale.topology import parse

FIXED = {"postgres": {"port": 5432}, "redis": {"port": 6379}}


def test_result_backend_is_the_brokers_redis_and_other_tasks_ignore_results(
        tmp_path: Path) -> None:
    topo = parse({**FIXED, "celery": {"workers": 1, "app": "p.celery:app"}})
    s = from_topology(topo, state_dir=tmp_path)
    assert s["CELERY_BROKER_URL"].startswith("redis://")
    assert s["CELERY_RESULT_BACKEND"] == s["CELERY_BROKER_URL"]
    assert s["CELERY_TASK_IGNORE_RESULT"] is True


def test_a_shared_event_broker_is_also_the_result_backend(tmp_path: Path) -> None:
    topo = parse({**FIXED, "celery": {"workers": 1, "app": "p.celery:app", "broker": "redis://bus.internal:6379/2"}})
    s = from_topology(topo, state_dir=tmp_path)
    assert s["CELERY_RESULT_BACKEND"] == "redis://bus.internal:6379/2"


def test_a_broker_that_is_not_redis_gets_no_result_backend(tmp_path: Path) -> None:
    topo = parse({**FIXED, "celery": {"workers": 1, "app": "p.celery:app", "broker": "amqp://guest@mq.internal//"}})
    assert from_topology(topo, state_dir=tmp_path)["CELERY_RESULT_BACKEND"] is None
