"""Events with a transactional outbox: nothing lost, nothing sent twice in effect.

``INSTALLED_APPS += ["djscale.events"]`` (app label ``djscale_events``) and migrate it on
every database whose transactions publish or consume events.

- :mod:`~djscale.events.outbox`: :func:`publish` writes an outbox row in the caller's
  transaction, so the event exists exactly when the domain change commits;
- :mod:`~djscale.events.relay`: :class:`Relay` publishes pending rows to Celery
  (``SELECT ... FOR UPDATE SKIP LOCKED``, so several relays can run) and marks a row
  published only after the broker accepted it: at-least-once delivery;
- :mod:`~djscale.events.consumers`: ``@consumer(topic)`` handlers run in one transaction
  with an inbox row keyed by (consumer, event id), so a redelivered event has no second
  effect; failures are retried with backoff and dead-lettered after N attempts;
- :mod:`~djscale.events.tasks`: the Celery task that delivers an event to its consumers.

Models live in :mod:`~djscale.events.models`; this package imports none of them at import
time, so it may be imported before Django is set up.
"""

from typing import Any

__all__ = ["Event", "Relay", "consumer", "deliver", "publish", "replay_dead_letter"]

_EXPORTS = {
    "publish": "djscale.events.outbox",
    "Relay": "djscale.events.relay",
    "Event": "djscale.events.consumers",
    "consumer": "djscale.events.consumers",
    "deliver": "djscale.events.consumers",
    "replay_dead_letter": "djscale.events.consumers",
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use (``from djscale.events import publish``)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'djscale.events' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
