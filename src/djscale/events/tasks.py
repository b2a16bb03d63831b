"""The Celery task that delivers an event to its consumers, with retries.

Acknowledged late (``acks_late``) and rejected when the worker is lost, so a worker
killed mid-way leaves the message to be delivered again; the consumers' inbox makes the
second delivery harmless. Failing consumers are retried with backoff (a new message with
a countdown) until their last attempt, then dead-lettered (see
:mod:`djscale.events.consumers`).

The task's result is stored (``ignore_result=False``, whatever ``task_ignore_result``
says): ``SUCCESS`` means every consumer handled or dead-lettered the event. The relay
reads it to confirm the delivery, and sends the event again when no such result appears
(a message the broker lost); see :mod:`djscale.events.relay`.
"""

from __future__ import annotations

from typing import Any

from djscale.errors import MissingDependency
from djscale.events.consumers import backoff, deliver
from djscale.events.relay import DELIVER_TASK

try:
    from celery import shared_task
except ImportError as exc:  # Celery comes with the events extra
    raise MissingDependency("celery", extra="events",
                            feature="djscale.events (the outbox relay and consumers)") from exc

__all__ = ["deliver_event"]


@shared_task(name=DELIVER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=None, ignore_result=False)  # type: ignore[untyped-decorator]
def deliver_event(self: Any, envelope: dict[str, Any]) -> None:
    """Deliver ``envelope`` to its consumers; retry the ones that failed."""
    attempt = int(self.request.retries) + 1
    failed = deliver(envelope, attempt=attempt)
    if failed:
        raise self.retry(countdown=backoff(attempt),
                         exc=RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items())))
