"""``manage.py move_shard LOGICAL TARGET``: move one logical shard online."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from djscale.errors import DjscaleError
from djscale.sharding.move import ShardMove, recover


class Command(BaseCommand):
    """Copy, catch up, freeze briefly, verify, flip, then delete the source copy."""

    help = ("Move one logical shard to another shard database while the app keeps "
            "serving (see docs/sharding.md).")

    def add_arguments(self, parser: CommandParser) -> None:
        """LOGICAL and TARGET, plus ``--grace`` seconds before the source copy is deleted."""
        parser.add_argument("logical", type=int, help="logical shard number")
        parser.add_argument("target", nargs="?", default=None,
                            help="database alias to move it to (e.g. shard3)")
        parser.add_argument("--grace", type=float, default=None,
                            help="seconds between the flip and deleting the source copy "
                                 "(default: twice the shard map TTL)")
        parser.add_argument("--recover", action="store_true",
                            help="clean up after a move of LOGICAL that was killed (run "
                                 "only when no move of it is running)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the move and print each step and the verification."""
        if options["recover"]:
            try:
                recover(options["logical"], log=self.stdout.write)
            except DjscaleError as exc:
                raise CommandError(str(exc)) from None
            return
        if not options["target"]:
            raise CommandError("give the database to move to: move_shard LOGICAL TARGET")
        try:
            move = ShardMove(options["logical"], options["target"],
                             grace_seconds=options["grace"], log=self.stdout.write)
            report = move.run()
        except DjscaleError as exc:
            raise CommandError(str(exc)) from None
        for check in report.checks:
            self.stdout.write(f"  {check.table}: {check.source_rows} rows, checksum "
                              f"{check.source_checksum} on both sides")
        self.stdout.write(self.style.SUCCESS(
            f"moved logical shard {report.logical} from {report.source} to {report.target}: "
            f"{report.copied} copied, {report.caught_up} caught up, {report.deleted} deleted "
            f"from the source, writes paused {report.freeze_ms:.0f} ms"))
