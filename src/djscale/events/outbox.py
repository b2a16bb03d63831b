"""Publishing: write the event into the outbox, in the caller's transaction.

:func:`publish` only inserts a row; it never talks to the broker. The row commits or
rolls back with the domain change around it, so a rolled-back change publishes nothing
and a committed one is never lost, whatever the broker's state. The relay sends it later.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router

from djscale.errors import EventError

__all__ = ["publish"]


def publish(topic: str, payload: Mapping[str, Any], *, using: str | None = None,
            key: str = "", headers: Mapping[str, str] | None = None) -> uuid.UUID:
    """Add an event to the outbox of database ``using`` in the current transaction.

    Must run inside ``transaction.atomic(using=...)`` on that database, together with the
    domain write the event describes. ``payload`` must be JSON-serialisable (dates,
    decimals and UUIDs become strings). Returns the event id, which consumers use to
    de-duplicate.
    """
    from djscale.events.models import OutboxEvent

    if not topic or len(topic) > 200:
        raise EventError(f"event topic {topic!r} is invalid: give 1-200 characters")
    alias = using or router.db_for_write(OutboxEvent) or "default"
    if not connections[alias].in_atomic_block:
        raise EventError(
            f"publish({topic!r}) must run inside transaction.atomic(using={alias!r}) with the "
            "domain write it describes; otherwise the event and the change can diverge")
    try:
        data = json.loads(json.dumps(dict(payload), cls=DjangoJSONEncoder))
    except (TypeError, ValueError) as exc:
        raise EventError(f"payload of event {topic!r} is not JSON-serialisable: {exc}") from None
    meta = dict(headers or {})
    from djscale.services.context import current_request_id

    request_id = current_request_id()
    if request_id and "request_id" not in meta:
        meta["request_id"] = request_id
    row = OutboxEvent.objects.using(alias).create(topic=topic, key=key, payload=data,
                                                  headers=meta)
    event_id: uuid.UUID = row.id
    return event_id
