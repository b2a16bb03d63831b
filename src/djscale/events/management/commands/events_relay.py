"""``django-admin events_relay``: publish outbox rows to the broker, for ever.

One relay thread per database (``--database``, repeatable; default: every primary of the
replication groups and shards of :mod:`djscale.conf`). Several relay processes may run:
they share the work. Every 5 s the total backlog is exported as the
``djscale_outbox_backlog`` gauge, and the events given up unconfirmed as
``djscale_outbox_unconfirmed``. Each relay thread also confirms deliveries
and sends again the events whose delivery stays unconfirmed (``--redeliver-after``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from djscale import conf
from djscale.errors import ConfigurationError
from djscale.events.relay import Relay, celery_app
from djscale.metrics import record_outbox_backlog, record_outbox_unconfirmed


class Command(BaseCommand):
    """Run the outbox relay until interrupted."""

    help = "Publish pending outbox events to the Celery broker (at-least-once)."

    def add_arguments(self, parser: CommandParser) -> None:
        """--database (repeatable), --interval, --batch-size, --once, --redeliver-after, --app."""
        parser.add_argument("--database", action="append", default=[])
        parser.add_argument("--interval", type=float, default=0.5)
        parser.add_argument("--batch-size", type=int, default=100)
        parser.add_argument("--once", action="store_true",
                            help="send one batch per database and exit")
        parser.add_argument("--redeliver-after", type=float, default=None,
                            help="seconds before an unconfirmed delivery is sent again "
                                 "(default: DJSCALE['EVENTS']['REDELIVER_AFTER'], 10)")
        parser.add_argument("--app", default="",
                            help="the Celery app, as for celery -A (default: "
                                 "DJSCALE['CELERY_APP'], the topology's [celery] app)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Relay until SIGTERM/SIGINT (or one pass with --once)."""
        try:
            config = conf.get()
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        primaries = [g.primary for g in config.replication.groups.values()] or ["default"]
        databases = options["database"] or list(dict.fromkeys(
            [*primaries, *config.sharding.aliases]))
        try:
            app = celery_app(options["app"] or None)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        try:
            relays = [Relay(app=app, using=db, batch_size=options["batch_size"],
                            redeliver_after=options["redeliver_after"]) for db in databases]
        except (ConfigurationError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if options["once"]:
            for relay in relays:
                self.stdout.write(f"{relay.using}: {relay.relay_once()} event(s) published")
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        threads = [threading.Thread(target=r.run, kwargs={"interval": options["interval"],
                                                          "stop": stop}, daemon=True)
                   for r in relays]
        for thread in threads:
            thread.start()
        self.stdout.write(f"relaying events of {', '.join(databases)}")
        while not stop.wait(5.0):
            try:
                record_outbox_backlog(rows=sum(r.backlog() for r in relays))
                record_outbox_unconfirmed(rows=sum(r.unconfirmed() for r in relays))
            except Exception as exc:  # noqa: BLE001 - a metric must not stop the relay
                self.stderr.write(f"cannot measure the outbox backlog: {exc}")
        for thread in threads:
            thread.join(5)
