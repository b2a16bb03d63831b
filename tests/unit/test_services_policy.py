"""Retry policy: idempotency rules and jittered exponential backoff."""

from __future__ import annotations

import random

import pytest

from djscale.services.policy import RetryPolicy, is_idempotent


@pytest.mark.parametrize("method", ["GET", "head", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_may_be_retried(method: str) -> None:
    assert is_idempotent(method, {})


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_post_and_patch_need_an_idempotency_key(method: str) -> None:
    assert not is_idempotent(method, {})
    assert is_idempotent(method, {"idempotency-key": "order-42"})
    assert not is_idempotent(method, {"Idempotency-Key": ""})


def test_backoff_is_jittered_below_an_exponential_cap() -> None:
    policy = RetryPolicy(retries=5, backoff=0.1, max_backoff=0.5, rng=random.Random(1))
    for attempt, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (5, 0.5)):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(0 <= d <= cap for d in delays)
        assert len(delays) > 40  # jitter: not one fixed value


def test_only_gateway_statuses_are_retried() -> None:
    policy = RetryPolicy()
    assert [s for s in (200, 404, 500, 502, 503, 504) if policy.retry_status(s)] == [
        502, 503, 504]


def test_negative_values_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        RetryPolicy(retries=-1)
