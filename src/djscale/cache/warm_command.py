"""The ``warm_cache`` management command (registered by djscale.management.commands).

``manage.py warm_cache [name ...] [--batch-size N] [--pause S] [--list]`` runs the
registered warmers (all by default) with a progress bar on stderr-free stdout, batch by
batch. Warmers register themselves when their module is imported; list the modules in
``DJSCALE["CACHE_WARMERS"]`` (dotted paths) or import them from an app's
``ready()``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from djscale import conf
from djscale.cache.warmers import Warmer, registered_warmers, warm
from djscale.errors import ConfigurationError

__all__ = ["Command"]


def _bar(done: int, total: int | None, width: int = 30) -> str:
    if not total:
        return f"{done} items"
    filled = min(width, int(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class Command(BaseCommand):
    """Fill the cache from the registered warmers."""

    help = "Fill the cache from the registered @warmer functions, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        """Warmer names and batching options."""
        parser.add_argument("names", nargs="*", help="warmers to run (default: all)")
        parser.add_argument("--batch-size", type=int, default=None,
                            help="items per set_many (default: each warmer's own)")
        parser.add_argument("--pause", type=float, default=0.0,
                            help="seconds to sleep between batches (spares the database)")
        parser.add_argument("--list", action="store_true", help="list the warmers and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the warmers."""
        try:
            modules = conf.get().cache.warmers
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise CommandError(f"DJSCALE['CACHE_WARMERS']: cannot import {module!r}: "
                                   f"{exc}") from exc
        warmers = registered_warmers()
        if options["list"]:
            for name in warmers:
                self.stdout.write(name)
            return
        names = options["names"] or list(warmers)
        unknown = [n for n in names if n not in warmers]
        if unknown:
            raise CommandError(f"unknown warmer(s) {', '.join(unknown)}; registered: "
                               f"{', '.join(warmers) or 'none'}")
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be >= 1")
        total_items = 0
        started = time.monotonic()
        for name in names:
            total_items += self._run(warmers[name], options["batch_size"], options["pause"])
        self.stdout.write(f"warmed {total_items} entries from {len(names)} warmer(s) in "
                          f"{time.monotonic() - started:.1f}s")

    def _run(self, w: Warmer, batch_size: int | None, pause: float) -> int:
        total = w.count() if w.count is not None else None

        def progress(done: int) -> None:
            self.stdout.write(f"\r{w.name}: {_bar(done, total)}", ending="")
            self.stdout.flush()

        done = warm(w, batch_size=batch_size, pause=pause, progress=progress)
        self.stdout.write(f"\r{w.name}: {_bar(done, total or done)} done")
        return done
