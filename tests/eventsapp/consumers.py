"""Consumers of the events tests (discovered by djscale.events at start-up)."""

from __future__ import annotations

from django.db.models import F

from djscale.events.consumers import Event, consumer
from tests.eventsapp.models import Account


def _close(event: Event) -> None:
    Account.objects.using(event.db).filter(pk=event.payload["account_id"]).update(
        closed=True, closed_count=F("closed_count") + 1)


@consumer("account_closed", name="eventsapp.close_account")
def close_account(event: Event) -> None:
    """Mark the account closed; a non-idempotent effect (a counter) shows duplicates."""
    _close(event)


@consumer("account_closed_on_shard", name="eventsapp.close_on_shard",
          using=lambda event: str(event.payload["shard"]))
def close_on_shard(event: Event) -> None:
    """The same on the shard that the event names."""
    _close(event)


@consumer("account_flaky", name="eventsapp.flaky", max_attempts=5)
def flaky(event: Event) -> None:
    """Fail ``fail_times`` deliveries, then succeed."""
    if event.attempt <= int(event.payload["fail_times"]):
        raise RuntimeError(f"flaky failure on attempt {event.attempt}")
    _close(event)


@consumer("account_poison", name="eventsapp.poison", max_attempts=3)
def poison(event: Event) -> None:
    """Always fail: ends in the dead letters."""
    _close(event)  # rolled back with the failure below
    raise ValueError("this event cannot be processed")


@consumer("account_slow", name="eventsapp.slow")
def slow(event: Event) -> None:
    """Apply the effect, then hold the transaction open while ``hold_file`` exists."""
    import logging
    import os
    import time

    _close(event)
    logging.getLogger(__name__).warning("slow consumer holding event %s", event.id)
    deadline = time.monotonic() + 60
    while os.path.exists(event.payload["hold_file"]) and time.monotonic() < deadline:
        time.sleep(0.05)


@consumer("account_traced", name="eventsapp.traced")
def traced(event: Event) -> None:
    """Rename the account after the request id current while the consumer runs."""
    from djscale.http.request_id import current_request_id

    Account.objects.using(event.db).filter(pk=event.payload["account_id"]).update(
        name=current_request_id() or "")
