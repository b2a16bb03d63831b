"""``manage.py lint_migrations``: the lock-hazard checks of ``migrate``, without a database.

For CI: every migration of the project's own apps (or of the apps / migrations named) is
analysed as if applied right after its parents, against PostgreSQL's column types, and
each hazard not opted out (``djscale_allow_unsafe``) is printed with its rewrite. Exit
status 1 when there is one. ``migrate`` itself only judges the migrations a database has
not applied yet (docs/migrations.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader

from djscale.db.migrate import findings_of_migrations


def _own_app(label: str) -> bool:
    config = apps.get_app_config(label)
    parts = Path(config.path).parts
    return not (config.name.startswith(("django.", "djscale"))
                or "site-packages" in parts or "dist-packages" in parts)


class Command(BaseCommand):
    """Report migrations that would lock busy PostgreSQL tables (W310-W318)."""

    help = "Check migrations for operations that lock busy PostgreSQL tables (no database)."

    def add_arguments(self, parser: CommandParser) -> None:
        """Apps or ``app_label.migration_prefix`` to check; the alias rendering types."""
        parser.add_argument("targets", nargs="*", metavar="app_label[.migration]",
                            help="default: every migration of the project's own apps")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="a PostgreSQL alias (only to render column types; not "
                                 "connected to)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Print each finding; fail when there is one."""
        if options["database"] not in connections:
            raise CommandError(f"{options['database']!r} is not a database alias")
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            raise CommandError(f"database {connection.alias!r} is {connection.vendor}: "
                               "the checks are about PostgreSQL's locks")
        loader = MigrationLoader(None, ignore_no_migrations=True)
        keys = sorted(loader.graph.nodes)
        if options["targets"]:
            wanted = []
            for target in options["targets"]:
                label, _, prefix = target.partition(".")
                matched = [k for k in keys if k[0] == label and k[1].startswith(prefix)]
                if not matched:
                    raise CommandError(f"no migration matches {target!r}")
                wanted.extend(matched)
            keys = sorted(set(wanted))
        else:
            keys = [k for k in keys if _own_app(k[0])]
        findings = findings_of_migrations(connection, loader, keys)
        for finding in findings:
            self.stdout.write(self.style.WARNING(finding.describe()))
            self.stdout.write(f"    hint: {finding.hint}")
        summary = f"{len(keys)} migration(s) checked, {len(findings)} finding(s)"
        if findings:
            raise CommandError(summary + ": rewrite them (docs/migrations.md) or allow them "
                               "with djscale_allow_unsafe")
        self.stdout.write(summary)
