"""``manage.py migrate_shards``: apply migrations on every shard, report each shard."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from djscale.errors import DjscaleError
from djscale.sharding import shardmap
from djscale.sharding.config import get_config
from djscale.sharding.migrate import migrate_shards


class Command(BaseCommand):
    """Migrate all shard databases (the main one is migrated by ``migrate``)."""

    help = "Apply migrations on every shard database and report per-shard status."

    def add_arguments(self, parser: CommandParser) -> None:
        """``--shard ALIAS`` (repeatable) limits the run to some shards."""
        parser.add_argument("--shard", action="append", dest="shards", default=None,
                            help="only this shard alias (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Migrate, print one line per shard, and fail if any shard failed."""
        try:
            cfg = get_config()
            if not cfg.aliases:
                raise CommandError("the topology has no [[shards]]: nothing to migrate")
            wanted = tuple(options["shards"] or cfg.aliases)
            unknown = [a for a in wanted if a not in cfg.aliases]
            if unknown:
                raise CommandError(f"{unknown[0]!r} is not a shard: expected one of "
                                   f"{', '.join(cfg.aliases)}")
            results = migrate_shards(aliases=wanted)
        except DjscaleError as exc:
            raise CommandError(str(exc)) from None
        for result in results:
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            self.stdout.write(style(result.describe()))
        failed = [r.alias for r in results if not r.ok]
        if failed:
            raise CommandError(f"migrations failed on {', '.join(failed)}")
        try:
            snap = shardmap.current()
        except DjscaleError as exc:
            self.stdout.write(f"shard map: not readable yet ({exc})")
            return
        counts = {a: len(snap.owned_by(a)) for a in cfg.aliases}
        self.stdout.write("shard map: " + ", ".join(f"{a}={n}" for a, n in counts.items())
                          + f" logical shards (version {snap.signature[1]})")
