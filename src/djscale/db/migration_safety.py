"""Find migration operations that would lock a busy PostgreSQL table for long.

A migration is applied while the previous release still serves traffic. An operation that
takes an ``ACCESS EXCLUSIVE`` lock and then rewrites or scans the whole table (or builds
an index under a ``SHARE`` lock) stops every read and write of that table for as long as
the work takes; renames and drops break the queries of the code still running. This module
reads the operations of a migration (and the statements of its ``RunSQL``) and returns one
:class:`Finding` per hazard, each with a djscale check id:

========  =====================================================================
W310      an index built without ``CONCURRENTLY`` (``AddIndex``, ``db_index``/
          ``unique`` on a new or altered field, a ``UniqueConstraint``, raw
          ``CREATE INDEX``)
W311      a column added ``NOT NULL`` without a constant default, or with a
          ``db_default`` PostgreSQL must compute row by row (a table rewrite)
W312      ``NOT NULL`` set on an existing column without a validated
          ``CHECK (col IS NOT NULL)`` (a full scan under ``ACCESS EXCLUSIVE``)
W313      a column's type changed (a rewrite, except widening a ``varchar``)
W314      a foreign key or check constraint added and validated in one step
          (without ``NOT VALID`` then ``VALIDATE CONSTRAINT``)
W315      a table or column renamed while the running code uses the old name
W316      a table or column dropped while the running code still uses it
W317      other statements that lock or rewrite a table (``LOCK TABLE``,
          ``VACUUM FULL``, ``CLUSTER``, ``REINDEX`` without ``CONCURRENTLY``,
          ``CONCURRENTLY`` inside a transaction)
W318      an ``UPDATE``/``DELETE`` of a whole table in one transaction (use
          :mod:`djscale.db.backfill`)
========  =====================================================================

Work on tables the same migration creates is never flagged: nobody uses them yet.
"Running code" is the project state of the migrations already applied (what the deployed
release was built with) together with the models loaded now (what is being deployed).

A migration opts out with a class attribute: ``djscale_allow_unsafe = True`` (all) or a
collection of ids (``{"djscale.W313"}``), for a table known to be small.

This module only reads migrations; :mod:`djscale.db.migrate` applies them. It is written
by hand after django-pg-zero-downtime-migrations and django-migration-linter: the first
rewrites Django's schema editor (a global change to every ``migrate``), the second is a
separate linter with its own configuration; djscale needs the findings as system checks
and as a guard inside its own ``migrate``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlparse
from django.apps import apps as global_apps
from django.db import models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations import operations as ops
from django.db.migrations.migration import Migration
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

logger = logging.getLogger(__name__)

__all__ = ["IDS", "Finding", "RunningCode", "allowed", "analyse", "describe_operation"]

#: Every id this module reports, with a short title (docs/checks.md says more).
IDS: dict[str, str] = {
    "djscale.W310": "index built without CONCURRENTLY",
    "djscale.W311": "NOT NULL column added without a constant default",
    "djscale.W312": "NOT NULL set without a validated CHECK constraint",
    "djscale.W313": "column type changed",
    "djscale.W314": "constraint validated while it is added",
    "djscale.W315": "table or column renamed while running code uses it",
    "djscale.W316": "table or column dropped while running code uses it",
    "djscale.W317": "statement that locks or rewrites a table",
    "djscale.W318": "whole-table UPDATE/DELETE in one transaction",
}

_HINTS: dict[str, str] = {
    "djscale.W310": "Use django.contrib.postgres.operations.AddIndexConcurrently in a "
                    "migration with atomic = False (a unique constraint: CREATE UNIQUE INDEX "
                    "CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX): "
                    "docs/migrations.md",
    "djscale.W311": "Add the column nullable (or with a constant default), fill it with "
                    "djscale.db.backfill, then make it NOT NULL: docs/migrations.md",
    "djscale.W312": "ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, VALIDATE "
                    "CONSTRAINT, then SET NOT NULL (PostgreSQL uses the constraint and "
                    "skips the scan): docs/migrations.md",
    "djscale.W313": "Add a new column, backfill it, switch the code over, drop the old one "
                    "in a later release: docs/migrations.md",
    "djscale.W314": "Add the constraint NOT VALID, then VALIDATE CONSTRAINT in a separate "
                    "statement (it takes a weaker lock): docs/migrations.md",
    "djscale.W315": "Add the new column/table, write both, backfill, move the reads, drop "
                    "the old one in a later release (or db_column/db_table to keep the "
                    "name): docs/migrations.md",
    "djscale.W316": "First release: stop using it (SeparateDatabaseAndState with only "
                    "state_operations); next release: drop it: docs/migrations.md",
    "djscale.W317": "Avoid it on a live table, or run it in a maintenance window with "
                    "djscale_allow_unsafe: docs/migrations.md",
    "djscale.W318": "Update in primary-key batches with djscale.db.backfill in a migration "
                    "with atomic = False: docs/migrations.md",
}


@dataclass(frozen=True)
class Finding:
    """One hazard: which migration, which operation, what goes wrong and what to do."""

    id: str
    migration: str
    operation: str
    message: str

    @property
    def hint(self) -> str:
        """What to do instead (the safe rewrite)."""
        return _HINTS[self.id]

    def describe(self) -> str:
        """One line: ``app.0002_x: AddIndex(...): message [djscale.W310]``."""
        return f"{self.migration}: {self.operation}: {self.message} [{self.id}]"


@dataclass
class RunningCode:
    """Tables and columns the deployed and the deploying code use (``table -> columns``)."""

    columns: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of_state(cls, state: ProjectState) -> RunningCode:
        """What the models of a migration state use."""
        running = cls()
        running.add_models(state.apps.get_models())
        return running

    @classmethod
    def of_project(cls, applied: ProjectState | None = None) -> RunningCode:
        """The loaded models, plus the state of the applied migrations when given."""
        running = cls()
        running.add_models(global_apps.get_models())
        if applied is not None:
            running.add_models(applied.apps.get_models())
        return running

    def add_models(self, model_classes: Iterable[type[models.Model]]) -> None:
        """Record the table and the columns of each concrete model."""
        for model in model_classes:
            meta = model._meta
            if not meta.managed or meta.proxy:
                continue
            cols = self.columns.setdefault(meta.db_table.lower(), set())
            for f in meta.local_concrete_fields:
                if f.column:
                    cols.add(f.column.lower())

    def uses_table(self, table: str) -> bool:
        """True when a model of the running code lives in ``table``."""
        return table.lower() in self.columns

    def uses_column(self, table: str, column: str) -> bool:
        """True when a model of the running code reads ``table.column``."""
        return column.lower() in self.columns.get(table.lower(), set())


def allowed(migration: Migration, finding_id: str) -> bool:
    """True when the migration opted out of ``finding_id`` (``djscale_allow_unsafe``)."""
    allow = getattr(migration, "djscale_allow_unsafe", False)
    if allow is True:
        return True
    if isinstance(allow, str):
        return allow == finding_id
    if isinstance(allow, Iterable):
        return finding_id in allow
    return False


def describe_operation(operation: Operation) -> str:
    """A short label: the class name and what it names (``AddIndex(order, order_idx)``)."""
    name = type(operation).__name__
    parts = []
    for attr in ("model_name", "name", "old_name", "new_name"):
        value = getattr(operation, attr, None)
        if isinstance(value, str):
            parts.append(value)
    index = getattr(operation, "index", None) or getattr(operation, "constraint", None)
    if index is not None and getattr(index, "name", None):
        parts.append(str(index.name))
    if isinstance(operation, ops.RunSQL):
        return "RunSQL"
    return f"{name}({', '.join(dict.fromkeys(parts))})"


def analyse(migration: Migration, state: ProjectState, *, connection: BaseDatabaseWrapper,
            running: RunningCode | None = None, alias: str | None = None,
            new_tables: set[str] | None = None) -> list[Finding]:
    """The hazards of ``migration`` applied on ``state`` (the state before it).

    ``connection`` renders column types (it is not opened); ``running`` is what the code
    in service uses (default: the models of ``state``); with ``alias``, operations the
    database routers keep off that database are skipped. ``new_tables`` (lower case)
    are tables created earlier in the same run, as empty as those this migration creates;
    the tables this one creates are added to it. Opt-outs are not applied here: see
    :func:`allowed`.
    """
    walker = _Walker(migration, connection, running or RunningCode.of_state(state), alias)
    if new_tables is not None:
        walker.new_tables = new_tables
    walker.walk(migration.operations, state.clone())
    return walker.findings


# ------------------------------------------------------------------ operations


class _Walker:
    """Walks a migration's operations with the project state each one starts from."""

    def __init__(self, migration: Migration, connection: BaseDatabaseWrapper,
                 running: RunningCode, alias: str | None) -> None:
        self.migration = migration
        self.alias = alias
        self.label = f"{migration.app_label}.{migration.name}"
        self.connection = connection
        self.running = running
        self.new_tables: set[str] = set()
        self.validated: set[str] = set()  # tables with a VALIDATE CONSTRAINT so far
        self.findings: list[Finding] = []

    def flag(self, finding_id: str, operation: str, message: str) -> None:
        self.findings.append(Finding(finding_id, self.label, operation, message))

    def walk(self, operations: Sequence[Operation], state: ProjectState) -> None:
        for operation in operations:
            if isinstance(operation, ops.SeparateDatabaseAndState):
                # The database operations run against a copy; the state moves by the
                # state operations only.
                self.walk(operation.database_operations, state.clone())
                for inner in operation.state_operations:
                    inner.state_forwards(self.migration.app_label, state)
                continue
            before = state.clone()
            operation.state_forwards(self.migration.app_label, state)
            try:
                if self.runs_here(operation, before, state):
                    self.operation(operation, before, state)
            except (LookupError, AttributeError, TypeError, ValueError) as exc:
                # An operation this analyser does not understand must not block a deploy.
                logger.warning("djscale could not analyse %s of %s: %s",
                               describe_operation(operation), self.label, exc)

    def runs_here(self, op: Operation, before: ProjectState, after: ProjectState) -> bool:
        """False when the routers keep ``op`` off the analysed database."""
        if self.alias is None:
            return True
        app_label = self.migration.app_label
        if isinstance(op, ops.RunSQL | ops.RunPython):
            return bool(router.allow_migrate(self.alias, app_label, **op.hints))
        name = getattr(op, "model_name", None) or getattr(op, "name", None)
        if isinstance(op, ops.RenameModel):
            name = op.old_name
        for state in (before, after):
            try:
                model = state.apps.get_model(app_label, str(name))
            except LookupError:
                continue
            return bool(router.allow_migrate_model(self.alias, model))
        return True

    def _model(self, state: ProjectState, model_name: str) -> type[models.Model]:
        return state.apps.get_model(self.migration.app_label, model_name)

    def _table(self, state: ProjectState, model_name: str) -> str:
        return str(self._model(state, model_name)._meta.db_table)

    def _is_new(self, table: str) -> bool:
        return table.lower() in self.new_tables

    def operation(self, op: Operation, before: ProjectState, after: ProjectState) -> None:
        label = describe_operation(op)
        if isinstance(op, ops.CreateModel):
            self.new_tables.add(self._table(after, op.name).lower())
        elif isinstance(op, ops.RunSQL):
            self.run_sql(op)
        elif isinstance(op, ops.AddIndex):
            self.add_index(op, label, before)
        elif isinstance(op, ops.AddConstraint):
            self.add_constraint(op, label, before)
        elif isinstance(op, ops.AddField):
            self.add_field(op, label, after)
        elif isinstance(op, ops.AlterField):
            self.alter_field(op, label, before, after)
        elif isinstance(op, ops.RenameField):
            self.rename_field(op, label, before, after)
        elif isinstance(op, ops.RenameModel | ops.AlterModelTable):
            self.rename_table(op, label, before, after)
        elif isinstance(op, ops.RemoveField):
            table = self._table(before, op.model_name)
            column = getattr(self._model(before, op.model_name)._meta.get_field(op.name),
                             "column", None)
            if column and not self._is_new(table) and self.running.uses_column(table, column):
                self.flag("djscale.W316", label, f"drops column {table}.{column} that the "
                          "running code still reads and writes")
        elif isinstance(op, ops.DeleteModel):
            table = self._table(before, op.name)
            if not self._is_new(table) and self.running.uses_table(table):
                self.flag("djscale.W316", label, f"drops table {table} that the running "
                          "code still uses")
        elif isinstance(op, ops.AlterUniqueTogether | ops.AlterIndexTogether):
            self.alter_together(op, label, before, after)

    def add_index(self, op: ops.AddIndex, label: str, before: ProjectState) -> None:
        table = self._table(before, op.model_name)
        if self._is_new(table):
            return
        concurrent = type(op).__name__ == "AddIndexConcurrently"
        if not concurrent:
            self.flag("djscale.W310", label, f"builds index {op.index.name} on {table} "
                      "under a SHARE lock: writes to the table wait until it is built")
        elif getattr(self.migration, "atomic", True):
            self.flag("djscale.W317", label, "CREATE INDEX CONCURRENTLY cannot run inside "
                      "a transaction: set atomic = False on the migration")

    def add_constraint(self, op: ops.AddConstraint, label: str, before: ProjectState) -> None:
        table = self._table(before, op.model_name)
        if self._is_new(table):
            return
        constraint = op.constraint
        if isinstance(constraint, models.CheckConstraint):
            self.flag("djscale.W314", label, f"adds and validates check {constraint.name} "
                      f"on {table} in one step: a full scan under ACCESS EXCLUSIVE")
        else:
            self.flag("djscale.W310", label, f"builds the index of {constraint.name} on "
                      f"{table} without CONCURRENTLY: writes wait until it is built")

    def add_field(self, op: ops.AddField, label: str, after: ProjectState) -> None:
        model = self._model(after, op.model_name)
        table = str(model._meta.db_table)
        if self._is_new(table):
            return
        f = model._meta.get_field(op.name)
        if not isinstance(f, models.Field) or f.many_to_many:
            return
        where = f"{table}.{f.column}"
        db_default = getattr(f, "db_default", models.NOT_PROVIDED)
        if db_default is not models.NOT_PROVIDED:
            if not _constant(db_default):
                function = getattr(db_default, "extra", {}).get("function") or getattr(
                    db_default, "function", None)
                shown = f"{function}()" if isinstance(function, str) else repr(db_default)
                self.flag("djscale.W311", label, f"adds {where} with db_default {shown}: "
                          "PostgreSQL rewrites the table row by row under ACCESS EXCLUSIVE")
        elif not f.null and not f.has_default():
            self.flag("djscale.W311", label, f"adds {where} NOT NULL without a default: it "
                      "fails on a table with rows")
        if f.unique or (getattr(f, "db_index", False) and not f.primary_key):
            self.flag("djscale.W310", label, f"builds an index on {where} without "
                      "CONCURRENTLY: writes wait until it is built")
        if f.remote_field is not None and getattr(f, "db_constraint", False):
            self.flag("djscale.W314", label, f"adds foreign key {where} and validates it at "
                      "once: locks both tables")

    def alter_field(self, op: ops.AlterField, label: str, before: ProjectState,
                    after: ProjectState) -> None:
        old_model = self._model(before, op.model_name)
        table = str(old_model._meta.db_table)
        if self._is_new(table):
            return
        old = old_model._meta.get_field(op.name)
        new = self._model(after, op.model_name)._meta.get_field(op.name)
        if not isinstance(old, models.Field) or not isinstance(new, models.Field):
            return
        where = f"{table}.{old.column}"
        if old.column and old.column != new.column and self.running.uses_column(table,
                                                                                  old.column):
            self.flag("djscale.W315", label, f"renames column {where} to {new.column}: the "
                      "running code still uses the old name")
        old_type, new_type = old.db_type(self.connection), new.db_type(self.connection)
        if old_type and new_type and not _compatible_types(old_type, new_type):
            self.flag("djscale.W313", label, f"changes {where} from {old_type} to "
                      f"{new_type}: a table rewrite under ACCESS EXCLUSIVE")
        if old.null and not new.null:
            self.flag("djscale.W312", label, f"sets {where} NOT NULL: a full scan under "
                      "ACCESS EXCLUSIVE")
        old_index, new_index_flag = getattr(old, "db_index", False), getattr(new, "db_index",
                                                                             False)
        new_index = (new.unique and not old.unique) or (
            new_index_flag and not old_index and not new.unique)
        if new_index and not new.primary_key:
            self.flag("djscale.W310", label, f"builds an index on {where} without "
                      "CONCURRENTLY: writes wait until it is built")
        old_fk = old.remote_field is not None and getattr(old, "db_constraint", False)
        new_fk = new.remote_field is not None and getattr(new, "db_constraint", False)
        old_target = old.remote_field.model if old.remote_field is not None else None
        new_target = new.remote_field.model if new.remote_field is not None else None
        if new_fk and (not old_fk or old_target != new_target):
            self.flag("djscale.W314", label, f"adds foreign key {where} and validates it at "
                      "once: locks both tables")

    def rename_field(self, op: ops.RenameField, label: str, before: ProjectState,
                     after: ProjectState) -> None:
        table = self._table(before, op.model_name)
        old = self._model(before, op.model_name)._meta.get_field(op.old_name)
        new = self._model(after, op.model_name)._meta.get_field(op.new_name)
        old_col, new_col = getattr(old, "column", None), getattr(new, "column", None)
        if (old_col and old_col != new_col and not self._is_new(table)
                and self.running.uses_column(table, old_col)):
            self.flag("djscale.W315", label, f"renames column {table}.{old_col} to "
                      f"{new_col}: the running code still uses the old name")

    def rename_table(self, op: ops.RenameModel | ops.AlterModelTable, label: str,
                     before: ProjectState, after: ProjectState) -> None:
        old_name = op.old_name if isinstance(op, ops.RenameModel) else op.name
        new_name = op.new_name if isinstance(op, ops.RenameModel) else op.name
        old_table = self._table(before, old_name)
        new_table = self._table(after, new_name)
        if (old_table != new_table and not self._is_new(old_table)
                and self.running.uses_table(old_table)):
            self.flag("djscale.W315", label, f"renames table {old_table} to {new_table}: "
                      "the running code still uses the old name")

    def alter_together(self, op: ops.AlterUniqueTogether | ops.AlterIndexTogether,
                       label: str, before: ProjectState, after: ProjectState) -> None:
        table = self._table(before, op.name)
        if self._is_new(table):
            return
        key = op.option_name
        old = set(before.models[self.migration.app_label, op.name_lower].options.get(key, ()))
        new = set(after.models[self.migration.app_label, op.name_lower].options.get(key, ()))
        for fields in sorted(new - old):
            self.flag("djscale.W310", label, f"builds an index on {table} "
                      f"({', '.join(fields)}) without CONCURRENTLY: writes wait until it "
                      "is built")

    # -------------------------------------------------------------- RunSQL

    def run_sql(self, op: ops.RunSQL) -> None:
        for statement in _statements(op.sql):
            self.statement(statement)

    def statement(self, sql: str) -> None:
        text = " ".join(sql.split())
        upper = text.upper()
        short = text if len(text) <= 80 else text[:77] + "..."
        label = f"RunSQL({short})"
        atomic = getattr(self.migration, "atomic", True)
        if m := re.match(r"CREATE\s+(?:UNLOGGED\s+|TEMP(?:ORARY)?\s+)?TABLE\s+"
                         r"(?:IF\s+NOT\s+EXISTS\s+)?(\S+)", upper):
            self.new_tables.add(_unquote(m.group(1)))
            return
        if m := re.match(r"CREATE\s+(UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?.*?\bON\s+"
                         r"(?:ONLY\s+)?(\S+)", upper):
            table = _unquote(m.group(3).split("(")[0])
            if m.group(2) and atomic:
                self.flag("djscale.W317", label, "CREATE INDEX CONCURRENTLY cannot run "
                          "inside a transaction: set atomic = False on the migration")
            elif not m.group(2) and not self._is_new(table):
                self.flag("djscale.W310", label, f"builds an index on {table} without "
                          "CONCURRENTLY: writes wait until it is built")
            return
        if re.match(r"(REINDEX|DROP\s+INDEX)\s+(?!.*CONCURRENTLY)", upper):
            self.flag("djscale.W317", label, "takes an exclusive lock on the table while it "
                      "works; use CONCURRENTLY")
            return
        if re.match(r"(LOCK\s+(TABLE\s+)?|VACUUM\s+(\(.*FULL.*\)|FULL)|CLUSTER\b)", upper):
            self.flag("djscale.W317", label, "locks the table for the whole statement")
            return
        if m := re.match(r"(UPDATE|DELETE\s+FROM)\s+(?:ONLY\s+)?(\S+)", upper):
            table = _unquote(m.group(2))
            if not self._is_new(table) and (" WHERE " not in f" {upper} " or atomic):
                self.flag("djscale.W318", label, f"changes rows of {table} in one "
                          "transaction: their row locks are held until it commits")
            return
        if m := re.match(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(.+)", upper):
            for name in m.group(1).replace(" CASCADE", "").replace(" RESTRICT", "").split(","):
                table = _unquote(name.strip())
                if not self._is_new(table) and self.running.uses_table(table):
                    self.flag("djscale.W316", label, f"drops table {table} that the "
                              "running code still uses")
            return
        if m := re.match(r"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(\S+)\s+(.*)", upper):
            table = _unquote(m.group(1))
            if not self._is_new(table):
                for action in _split_actions(m.group(2)):
                    self.alter_table(table, action, label)

    def alter_table(self, table: str, action: str, label: str) -> None:
        if m := re.match(r"RENAME\s+(?:COLUMN\s+)?(\S+)\s+TO\s+(\S+)", action):
            column = _unquote(m.group(1))
            if column != "CONSTRAINT" and self.running.uses_column(table, column):
                self.flag("djscale.W315", label, f"renames column {table}.{column}: the "
                          "running code still uses the old name")
        elif re.match(r"RENAME\s+TO\s+", action):
            if self.running.uses_table(table):
                self.flag("djscale.W315", label, f"renames table {table}: the running code "
                          "still uses the old name")
        elif m := re.match(r"DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(\S+)", action):
            column = _unquote(m.group(1))
            if column != "CONSTRAINT" and self.running.uses_column(table, column):
                self.flag("djscale.W316", label, f"drops column {table}.{column} that the "
                          "running code still reads and writes")
        elif re.search(r"\bTYPE\s+", action) and action.startswith("ALTER"):
            self.flag("djscale.W313", label, f"changes a column type of {table}: a table "
                      "rewrite under ACCESS EXCLUSIVE")
        elif re.search(r"\bSET\s+NOT\s+NULL\b", action):
            if table not in self.validated:
                self.flag("djscale.W312", label, f"sets a column of {table} NOT NULL: a "
                          "full scan under ACCESS EXCLUSIVE")
        elif re.match(r"VALIDATE\s+CONSTRAINT\b", action):
            self.validated.add(table)
        elif m := re.match(r"ADD\s+(?:CONSTRAINT\s+\S+\s+)?(FOREIGN\s+KEY|CHECK|UNIQUE|"
                           r"PRIMARY\s+KEY|EXCLUDE)\b", action):
            kind = m.group(1)
            if kind in ("FOREIGN KEY", "CHECK"):
                if not re.search(r"\bNOT\s+VALID\b", action):
                    self.flag("djscale.W314", label, f"adds a {kind.lower()} constraint to "
                              f"{table} and validates it at once")
            elif " USING INDEX " not in f" {action} ":
                self.flag("djscale.W310", label, f"builds the index of a {kind.lower()} "
                          f"constraint on {table} without CONCURRENTLY")
        elif m := re.match(r"ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\S+)\s+(.*)",
                           action):
            rest = m.group(2)
            if re.search(r"\bNOT\s+NULL\b", rest) and not re.search(r"\bDEFAULT\b", rest):
                self.flag("djscale.W311", label, f"adds {table}.{_unquote(m.group(1))} NOT "
                          "NULL without a default: it fails on a table with rows")
            if re.search(r"\bDEFAULT\s+[A-Z_]+\s*\(", rest) and not re.search(
                    r"\bDEFAULT\s+(NOW|CURRENT_TIMESTAMP|TRANSACTION_TIMESTAMP)\s*\(", rest):
                self.flag("djscale.W311", label, f"adds {table}.{_unquote(m.group(1))} with "
                          "a function default: it may rewrite the table")
            if re.search(r"\b(UNIQUE|PRIMARY\s+KEY)\b", rest):
                self.flag("djscale.W310", label, f"builds an index on {table} without "
                          "CONCURRENTLY")
            if re.search(r"\bREFERENCES\b", rest):
                self.flag("djscale.W314", label, f"adds a foreign key to {table} and "
                          "validates it at once")


# ------------------------------------------------------------------ helpers


def _constant(expression: Any) -> bool:
    """True for a db_default PostgreSQL stores once (a value, or the statement's time)."""
    from django.db.models.functions import Now

    return (not hasattr(expression, "resolve_expression")
            or isinstance(expression, models.Value | Now))


_VARCHAR = re.compile(r"varchar\((\d+)\)")


def _compatible_types(old: str, new: str) -> bool:
    """True when PostgreSQL changes ``old`` to ``new`` without rewriting the table."""
    old, new = old.lower().strip(), new.lower().strip()
    if old == new:
        return True
    o, n = _VARCHAR.fullmatch(old), _VARCHAR.fullmatch(new)
    if o and (new == "text" or (n and int(n.group(1)) >= int(o.group(1)))):
        return True
    return (old, new) in {("varchar", "text"), ("text", "varchar")}


def _statements(sql: Any) -> Iterator[str]:
    """The SQL statements of a RunSQL ``sql`` argument, comments removed."""
    if isinstance(sql, str):
        parts: list[Any] = [sql]
    else:
        parts = [s[0] if isinstance(s, list | tuple) else s for s in sql]
    for part in parts:
        if part is None:
            continue
        text = sqlparse.format(str(part), strip_comments=True)
        for statement in sqlparse.split(text):
            statement = statement.strip().rstrip(";").strip()
            if statement:
                yield statement


def _unquote(name: str) -> str:
    """A table or column name without quotes and schema, lower case."""
    name = name.strip().rstrip(";").strip()
    return name.split(".")[-1].strip('"').lower()


def _split_actions(actions: str) -> list[str]:
    """The comma-separated actions of one ALTER TABLE, commas in parentheses kept."""
    out: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in actions:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    out.append("".join(current).strip())
    return [a for a in out if a]
