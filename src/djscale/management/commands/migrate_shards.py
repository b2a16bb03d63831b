"""``manage.py migrate_shards``: apply migrations on every shard, report each shard.

Each shard is migrated by djscale's ``migrate`` (lock-hazard guard, ``lock_timeout``,
retries); a shard that fails is reported with what it applied, and running the command
again continues where each shard stopped.
"""

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
        parser.add_argument("--allow-unsafe", action="store_true",
                            help="apply migrations djscale flags as locking busy tables")
        parser.add_argument("--lock-timeout", type=int, default=None, metavar="MS",
                            help="PostgreSQL lock_timeout of each statement (0: none)")
        parser.add_argument("--attempts", type=int, default=None, metavar="N",
                            help="attempts after lock timeouts before a shard gives up")

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
            results = migrate_shards(aliases=wanted, allow_unsafe=options["allow_unsafe"],
                                     lock_timeout=options["lock_timeout"],
                                     attempts=options["attempts"], stderr=self.stderr)
        except DjscaleError as exc:
            raise CommandError(str(exc)) from None
        for result in results:
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            self.stdout.write(style(result.describe()))
        failed = [r.alias for r in results if not r.ok]
        if failed:
            raise CommandError(f"migrations failed on {', '.join(failed)}: run migrate_shards "
                               "again to continue where each shard stopped")
        try:
            snap = shardmap.current()
        except DjscaleError as exc:
            self.stdout.write(f"shard map: not readable yet ({exc})")
            return
        counts = {a: len(snap.owned_by(a)) for a in cfg.aliases}
        self.stdout.write("shard map: " + ", ".join(f"{a}={n}" for a, n in counts.items())
                          + f" logical shards (version {snap.signature[1]})")
