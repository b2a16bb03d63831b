"""``manage.py migrate`` with djscale's guard, ``lock_timeout`` and retries (PostgreSQL).

djscale's app provides this command, so it replaces Django's own ``migrate`` (an app's
command wins over the core one). Everything Django's does stays; on PostgreSQL it also:

- refuses unapplied migrations with lock hazards (djscale.W310-W318, docs/checks.md) and
  names each one, unless ``--allow-unsafe`` or the migration's ``djscale_allow_unsafe``
  allows it (``DJSCALE["MIGRATIONS"]["GUARD"] = False`` turns the guard off);
- applies them with ``lock_timeout`` (``--lock-timeout`` ms, default from
  ``DJSCALE["MIGRATIONS"]``) and tries again after a lock timeout or deadlock, with
  back-off, dropping what an interrupted ``CREATE INDEX CONCURRENTLY`` left behind.

``--fake``, ``--plan``, ``--check`` and ``--prune`` run exactly as Django's.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.core.management.commands import migrate
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.models.signals import pre_migrate

from djscale import conf
from djscale.db import migrate as online
from djscale.errors import DjscaleError


class Command(migrate.Command):
    """Django's ``migrate``, guarded against lock hazards and bounded in lock waits."""

    help = migrate.Command.help + (" djscale: refuses migrations that would lock busy "
                                   "tables and bounds lock waits with lock_timeout.")

    def add_arguments(self, parser: CommandParser) -> None:
        """Django's options plus ``--allow-unsafe``, ``--lock-timeout``, ``--attempts``."""
        super().add_arguments(parser)
        parser.add_argument("--allow-unsafe", action="store_true",
                            help="apply migrations djscale flags as locking busy tables")
        parser.add_argument("--lock-timeout", type=int, default=None, metavar="MS",
                            help="PostgreSQL lock_timeout of each statement (0: none)")
        parser.add_argument("--attempts", type=int, default=None, metavar="N",
                            help="attempts after lock timeouts before giving up")

    def execute(self, *args: Any, **options: Any) -> Any:
        """Django's, without the W310-W318 check warnings when the guard names them."""
        guarded = conf.get().migrations.guard and not options.get("allow_unsafe") and not any(
            options.get(o) for o in ("fake", "plan", "check_unapplied", "prune"))
        token = online.guard_reports.set(guarded)
        try:
            return super().execute(*args, **options)
        finally:
            online.guard_reports.reset(token)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run Django's migrate under the guard, lock_timeout and retries."""
        connection = connections[options["database"]]
        if connection.vendor != "postgresql" or any(
                options.get(o) for o in ("fake", "plan", "check_unapplied", "prune")):
            super().handle(*args, **options)
            return
        cfg = conf.get().migrations
        milliseconds = cfg.lock_timeout_ms if options["lock_timeout"] is None \
            else options["lock_timeout"]
        if milliseconds < 0 or (options["attempts"] is not None and options["attempts"] < 1):
            raise CommandError("--lock-timeout must be >= 0 and --attempts >= 1")
        guard = cfg.guard and not options["allow_unsafe"]
        policy = online.RetryPolicy.from_settings(options["attempts"])
        verbose = options["verbosity"] >= 1

        def before_migrate(plan: Any = None, using: str = "", **kwargs: Any) -> None:
            if using != connection.alias or plan is None or seen:
                return
            seen.append(True)
            if guard:
                executor = MigrationExecutor(connection)
                findings = online.findings_of_plan(connection, executor, plan)
                if findings:
                    lines = "\n".join(f"  {f.describe()}\n    hint: {f.hint}"
                                      for f in findings)
                    raise CommandError(
                        f"refusing to migrate database {connection.alias!r}: "
                        f"{len(findings)} operation(s) would lock busy tables:\n{lines}\n"
                        "Rewrite them (docs/migrations.md), or allow one migration with "
                        "djscale_allow_unsafe, or all with --allow-unsafe.")
            for name in online.drop_invalid_indexes(connection, plan):
                if verbose:
                    self.stdout.write(f"  dropped invalid index {name} left by an "
                                      "interrupted CREATE INDEX CONCURRENTLY")

        pooled = conf.get().deployment.pgbouncer == "transaction"
        if pooled and milliseconds:
            # A session-level SET through transaction pooling would stay on a server
            # connection other clients get next, and miss the next statement of ours.
            self.stderr.write(f"{connection.alias}: lock_timeout not set: the database is "
                              "reached through PgBouncer in transaction mode; migrate "
                              "against the primary directly (DJSCALE_ADDR_PG_* = host:port) "
                              "to bound lock waits")
            milliseconds = 0

        def attempt() -> None:
            seen.clear()
            try:
                if milliseconds:
                    with online.lock_timeout(connection, milliseconds):
                        super(Command, self).handle(*args, **options)
                else:
                    super(Command, self).handle(*args, **options)
            finally:
                options["skip_checks"] = True  # checked once, on the first attempt

        def on_retry(number: int, pause: float, exc: BaseException) -> None:
            reason = " ".join(str(exc).split())
            self.stderr.write(f"{connection.alias}: attempt {number}/{policy.attempts} "
                              f"failed on a lock ({reason}); trying again in {pause:.1f} s")

        seen: list[bool] = []
        pre_migrate.connect(before_migrate, dispatch_uid=f"djscale-guard-{id(self)}")
        try:
            online.with_retries(attempt, policy, on_retry=on_retry)
        except online.LockRetriesExhausted as exc:
            raise CommandError(f"{connection.alias}: {exc}") from None
        except DjscaleError as exc:  # e.g. a backfill in an atomic migration
            raise CommandError(f"{connection.alias}: {exc}") from None
        finally:
            pre_migrate.disconnect(dispatch_uid=f"djscale-guard-{id(self)}")
