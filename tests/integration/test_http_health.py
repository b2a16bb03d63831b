"""Readiness logic without stopping services: draining, tokens, deadlines, no secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client, override_settings

from djscale.http import health

# The checks open their own connections in worker threads.
pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    health.reset()


def _health(**extra: object) -> override_settings:
    return override_settings(DJSCALE={"HEALTH": extra})


def test_live_answers_without_io() -> None:
    response = Client().get("/health/live")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"


def test_ready_checks_primaries_replicas_and_cache_and_shows_no_secrets() -> None:
    response = Client().get("/health/ready", HTTP_HOST="not-allowed.example")
    body = response.json()
    assert response.status_code == 200, body
    assert {"db:default", "db:shard1", "replica:default_replica1", "cache"} <= set(body["checks"])
    assert "lag_seconds" in body["checks"]["replica:default_replica1"]
    text = json.dumps(body)
    for secret in ("127.0.0.1", settings.DATABASES["default"]["PORT"], "djscale", "redis://"):
        assert secret not in text.replace("djscale-", "")


def test_drain_file_makes_ready_503(tmp_path: Path) -> None:
    drain = tmp_path / "drain"
    with _health(DRAIN_FILE=str(drain)):
        assert Client().get("/health/ready").status_code == 200
        drain.touch()
        response = Client().get("/health/ready")
        assert response.status_code == 503
        assert response.json() == {"status": "draining"}
        drain.unlink()
        assert Client().get("/health/ready").status_code == 200


def test_token_hides_details_from_anonymous_probes() -> None:
    with _health(TOKEN="s3cret"):
        assert "checks" not in Client().get("/health/ready").json()
        detailed = Client().get("/health/ready", HTTP_AUTHORIZATION="Bearer s3cret").json()
        assert "checks" in detailed


def test_a_hung_check_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang() -> None:
        time.sleep(3)

    monkeypatch.setattr(health, "checks", lambda: [health.Check("db:hung", hang)])
    with _health(TIMEOUT=0.3):
        started = time.monotonic()
        results = health.readiness(use_cache=False)
        assert time.monotonic() - started < 1.0
        assert results[0].ok is False and results[0].error == "Timeout"
        # the next probe does not pile another thread onto the hung one
        again = health.readiness(use_cache=False)
        assert again[0].error == "Timeout"


def test_results_are_cached_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(health, "checks", lambda: [health.Check("x", lambda: calls.append(1))])
    with _health(CACHE_SECONDS=5):
        for _ in range(5):
            health.readiness()
    assert len(calls) == 1


def test_non_critical_failure_is_degraded_not_503(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise OSError("replica down")

    monkeypatch.setattr(health, "checks", lambda: [health.Check("replica:r", boom,
                                                                critical=False)])
    response = Client().get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["replica:r"]["error"] == "OSError"
