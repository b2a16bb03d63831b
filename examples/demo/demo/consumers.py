"""The demo's event consumer: index each created note exactly once in effect.

Discovered by ``djscale.events`` at start-up. The inbox (``djscale_inbox``) makes a
redelivered event (a worker killed mid-task, a broker that lost an ack) a no-op.
"""

from __future__ import annotations

import os
import socket
import time

from demo.models import NoteIndexed
from djscale.events.consumers import Event, consumer

MAX_WORK_MS = 2000
"""Cap of the simulated work per event (the publisher asks for ``work_ms``)."""


@consumer("note_created", name="demo.index_note")
def index_note(event: Event) -> None:
    """Simulate ``work_ms`` of work (a slow consumer), then record the note as indexed."""
    work_ms = event.payload.get("work_ms", 0)
    if isinstance(work_ms, int) and work_ms > 0:
        time.sleep(min(work_ms, MAX_WORK_MS) / 1000)
    NoteIndexed.objects.using(event.db).create(
        event_id=event.id, note_id=int(event.payload["note_id"]),
        worker=f"{socket.gethostname()}:{os.getpid()}")
