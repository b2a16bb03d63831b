"""``manage.py backfill app.Model --set column=SQL``: a batched, resumable data backfill.

The command-line face of :func:`djscale.db.backfill.backfill`: ``--set`` takes SQL
expressions over the row's columns (``--set total_v2=total_cents``), ``--where`` a SQL
condition; a sharded model is backfilled on every shard (or those named by ``--shard``).
Stopped, it continues where it was when run again with the same ``--set`` (or ``--name``).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, models
from django.db.models.expressions import RawSQL

from djscale import conf
from djscale.db.backfill import backfill
from djscale.errors import DjscaleError


class Command(BaseCommand):
    """Fill columns of a big table in short primary-key batches."""

    help = "Update a model's rows in primary-key batches, one short transaction each."

    def add_arguments(self, parser: CommandParser) -> None:
        """The model, ``--set`` (repeatable), and the batch options."""
        parser.add_argument("model", help="app_label.ModelName")
        parser.add_argument("--set", action="append", dest="values", required=True,
                            metavar="COLUMN=SQL", help="a column and its SQL expression")
        parser.add_argument("--where", default=None, metavar="SQL",
                            help="only rows matching this SQL condition")
        parser.add_argument("--database", default=None,
                            help="database alias (default: the router's; every shard for "
                                 "a sharded model)")
        parser.add_argument("--shard", action="append", dest="shards", default=None,
                            help="only this shard alias (repeatable)")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--pause", type=float, default=None, metavar="SECONDS")
        parser.add_argument("--name", default=None, help="key of the saved position")
        parser.add_argument("--max-batches", type=int, default=None, metavar="N",
                            help="stop after N batches per database (run again for more)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the backfill on each database and print one line per batch and per database."""
        try:
            model = apps.get_model(options["model"])
        except (LookupError, ValueError):
            raise CommandError(f"{options['model']!r} is not a model: expected "
                               "app_label.ModelName") from None
        values: dict[str, Any] = {}
        for item in options["values"]:
            column, sep, sql = item.partition("=")
            if not sep or not sql.strip():
                raise CommandError(f"--set {item!r}: expected COLUMN=SQL")
            try:
                field = model._meta.get_field(column.strip())
            except Exception:  # noqa: BLE001 - FieldDoesNotExist
                raise CommandError(f"{model._meta.label} has no field {column!r}") from None
            values[field.name] = RawSQL(sql, [], output_field=field)
        where = None
        if options["where"]:
            where = RawSQL(f"({options['where']})", [], output_field=models.BooleanField())
        for alias in self._aliases(model, options):
            try:
                result = backfill(model, values, where=where, using=alias,
                                  name=options["name"], batch_size=options["batch_size"],
                                  pause=options["pause"], max_batches=options["max_batches"],
                                  progress=lambda r: self.stdout.write(r.describe())
                                  if options["verbosity"] >= 2 else None)
            except (DatabaseError, DjscaleError) as exc:
                reason = " ".join(str(exc).split())
                raise CommandError(f"{alias}: {reason} (run it again to continue)") from None
            self.stdout.write(self.style.SUCCESS(result.describe()))

    def _aliases(self, model: type[models.Model], options: dict[str, Any]) -> list[str | None]:
        if options["database"]:
            return [options["database"]]
        aliases = conf.get().sharding.aliases if hasattr(model, "shard_key") else ()
        if options["shards"]:
            unknown = [a for a in options["shards"] if a not in aliases]
            if unknown:
                raise CommandError(f"{unknown[0]!r} is not a shard of {model._meta.label}")
            return list(options["shards"])
        return list(aliases) or [None]
