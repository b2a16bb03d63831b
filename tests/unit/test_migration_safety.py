"""The migration analyser flags operations that lock a busy table, and passes their rewrites.

Each unsafe migration below is one a team writes on an ordinary day; its safe rewrite is the
one docs/migrations.md shows. The analyser only reads operations and the project state: no
database is opened (the PostgreSQL connection object only renders column types).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.postgres.operations import AddIndexConcurrently
from django.core.management import CommandError, call_command
from django.db import connections, migrations, models
from django.db.migrations.migration import Migration
from django.db.migrations.state import ModelState, ProjectState
from django.db.models.functions import Now, Random

from djscale.db.migration_safety import Finding, RunningCode, allowed, analyse


def _state() -> ProjectState:
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("email", models.CharField(max_length=120)),
    ]))
    state.add_model(ModelState("shop", "Order", [
        ("id", models.BigAutoField(primary_key=True)),
        ("user_id", models.BigIntegerField()),
        ("amount", models.IntegerField()),
        ("note", models.CharField(max_length=40, null=True)),
    ]))
    return state


def _migration(*operations: Any, atomic: bool = True, **attrs: Any) -> Migration:
    migration = Migration("0002_change", "shop")
    for key, value in {"operations": list(operations), "atomic": atomic, **attrs}.items():
        setattr(migration, key, value)
    return migration


def _ids(*operations: Any, atomic: bool = True, state: ProjectState | None = None,
         running: RunningCode | None = None) -> list[str]:
    found = analyse(_migration(*operations, atomic=atomic), state or _state(),
                    connection=connections["default"], running=running)
    return [f.id for f in found]


# -------------------------------------------------------------- indexes (W310)

def test_add_index_is_flagged() -> None:
    index = models.Index(fields=["user_id"], name="order_user_idx")
    assert _ids(migrations.AddIndex("order", index)) == ["djscale.W310"]


def test_add_index_concurrently_in_a_non_atomic_migration_passes() -> None:
    index = models.Index(fields=["user_id"], name="order_user_idx")
    assert _ids(AddIndexConcurrently("order", index), atomic=False) == []


def test_add_index_concurrently_in_an_atomic_migration_cannot_run() -> None:
    index = models.Index(fields=["user_id"], name="order_user_idx")
    assert _ids(AddIndexConcurrently("order", index)) == ["djscale.W317"]


def test_unique_constraint_is_flagged_and_its_concurrent_sql_rewrite_passes() -> None:
    constraint = models.UniqueConstraint(fields=["user_id", "amount"], name="order_uniq")
    assert _ids(migrations.AddConstraint("order", constraint)) == ["djscale.W310"]
    rewrite = migrations.SeparateDatabaseAndState(
        database_operations=[migrations.RunSQL(
            "CREATE UNIQUE INDEX CONCURRENTLY order_uniq ON shop_order (user_id, amount);"
            "ALTER TABLE shop_order ADD CONSTRAINT order_uniq UNIQUE USING INDEX order_uniq")],
        state_operations=[migrations.AddConstraint("order", constraint)])
    assert _ids(rewrite, atomic=False) == []


def test_raw_create_index_is_flagged_unless_concurrent() -> None:
    assert _ids(migrations.RunSQL("CREATE INDEX o_idx ON shop_order (amount)")) == [
        "djscale.W310"]
    assert _ids(migrations.RunSQL("CREATE INDEX CONCURRENTLY o_idx ON shop_order (amount)"),
                atomic=False) == []


def test_indexes_of_a_table_created_in_the_same_migration_pass() -> None:
    create = migrations.CreateModel("Invoice", [
        ("id", models.BigAutoField(primary_key=True)),
        ("number", models.CharField(max_length=20, unique=True))])
    index = models.Index(fields=["number"], name="invoice_number_idx")
    assert _ids(create, migrations.AddIndex("invoice", index),
                migrations.RunSQL("CREATE INDEX i2 ON shop_invoice (number)")) == []


def test_a_table_created_earlier_in_the_same_run_is_new_too() -> None:
    created: set[str] = set()
    first = _migration(migrations.CreateModel("Invoice", [
        ("id", models.BigAutoField(primary_key=True)),
        ("number", models.CharField(max_length=20))]))
    state = _state()
    assert analyse(first, state, connection=connections["default"], new_tables=created) == []
    first.mutate_state(state, preserve=False)
    index = models.Index(fields=["number"], name="invoice_number_idx")
    second = _migration(migrations.AddIndex("invoice", index))
    assert analyse(second, state, connection=connections["default"], new_tables=created) == []
    assert [f.id for f in analyse(second, state, connection=connections["default"])] == [
        "djscale.W310"]


# -------------------------------------------------------------- NOT NULL (W311, W312)

def test_not_null_column_without_default_is_flagged() -> None:
    field = models.IntegerField()
    assert _ids(migrations.AddField("order", "weight", field)) == ["djscale.W311"]


def test_volatile_db_default_is_flagged_and_a_constant_one_passes() -> None:
    assert _ids(migrations.AddField("order", "r", models.FloatField(db_default=Random()))) \
        == ["djscale.W311"]
    assert _ids(migrations.AddField("order", "weight", models.IntegerField(db_default=0))) \
        == []
    assert _ids(migrations.AddField("order", "at", models.DateTimeField(db_default=Now()))) \
        == []


def test_nullable_column_and_constant_default_pass() -> None:
    assert _ids(migrations.AddField("order", "weight", models.IntegerField(null=True))) == []
    assert _ids(migrations.AddField("order", "weight", models.IntegerField(default=0))) == []


def test_set_not_null_is_flagged_and_the_validated_check_rewrite_passes() -> None:
    not_null = models.CharField(max_length=40, default="")
    assert _ids(migrations.AlterField("order", "note", not_null)) == ["djscale.W312"]
    rewrite = migrations.SeparateDatabaseAndState(
        database_operations=[migrations.RunSQL(
            "ALTER TABLE shop_order ADD CONSTRAINT note_nn CHECK (note IS NOT NULL) NOT VALID;"
            "ALTER TABLE shop_order VALIDATE CONSTRAINT note_nn;"
            "ALTER TABLE shop_order ALTER COLUMN note SET NOT NULL;"
            "ALTER TABLE shop_order DROP CONSTRAINT note_nn")],
        state_operations=[migrations.AlterField("order", "note", not_null)])
    assert _ids(rewrite) == []


# -------------------------------------------------------------- types (W313)

def test_column_type_change_is_flagged() -> None:
    assert _ids(migrations.AlterField("order", "amount", models.BigIntegerField())) == [
        "djscale.W313"]
    assert _ids(migrations.RunSQL("ALTER TABLE shop_order ALTER COLUMN amount TYPE bigint")) \
        == ["djscale.W313"]


def test_widening_a_varchar_passes() -> None:
    wider = models.CharField(max_length=200, null=True)
    assert _ids(migrations.AlterField("order", "note", wider)) == []
    assert _ids(migrations.AlterField("order", "note", models.TextField(null=True))) == []


# -------------------------------------------------------------- constraints (W314)

def test_check_constraint_is_flagged_and_not_valid_then_validate_passes() -> None:
    check = models.CheckConstraint(condition=models.Q(amount__gte=0), name="amount_pos")
    assert _ids(migrations.AddConstraint("order", check)) == ["djscale.W314"]
    rewrite = migrations.SeparateDatabaseAndState(
        database_operations=[migrations.RunSQL(
            "ALTER TABLE shop_order ADD CONSTRAINT amount_pos CHECK (amount >= 0) NOT VALID;"
            "ALTER TABLE shop_order VALIDATE CONSTRAINT amount_pos")],
        state_operations=[migrations.AddConstraint("order", check)])
    assert _ids(rewrite) == []


def test_foreign_key_column_is_flagged_for_its_index_and_its_constraint() -> None:
    fk = models.ForeignKey("shop.Customer", null=True, on_delete=models.CASCADE)
    assert sorted(_ids(migrations.AddField("order", "customer", fk))) == [
        "djscale.W310", "djscale.W314"]
    safe = models.ForeignKey("shop.Customer", null=True, on_delete=models.CASCADE,
                             db_index=False, db_constraint=False)
    later = migrations.RunSQL(
        "CREATE INDEX CONCURRENTLY order_customer ON shop_order (customer_id);"
        "ALTER TABLE shop_order ADD CONSTRAINT order_customer_fk FOREIGN KEY (customer_id) "
        "REFERENCES shop_customer (id) NOT VALID;"
        "ALTER TABLE shop_order VALIDATE CONSTRAINT order_customer_fk")
    assert _ids(migrations.AddField("order", "customer", safe), later, atomic=False) == []


# -------------------------------------------------------------- renames and drops (W315, W316)

def test_rename_field_is_flagged_and_renaming_only_in_python_passes() -> None:
    assert _ids(migrations.RenameField("order", "note", "comment")) == ["djscale.W315"]
    keep_column = migrations.AlterField("order", "note", models.CharField(
        max_length=40, null=True, db_column="note"))
    assert _ids(keep_column, migrations.RenameField("order", "note", "comment")) == []


def test_rename_model_is_flagged() -> None:
    assert _ids(migrations.RenameModel("Order", "Purchase")) == ["djscale.W315"]
    assert _ids(migrations.RunSQL("ALTER TABLE shop_order RENAME COLUMN note TO c")) == [
        "djscale.W315"]


def test_dropping_a_column_the_running_code_uses_is_flagged() -> None:
    assert _ids(migrations.RemoveField("order", "note")) == ["djscale.W316"]
    assert _ids(migrations.DeleteModel("Customer")) == ["djscale.W316"]
    assert _ids(migrations.RunSQL("ALTER TABLE shop_order DROP COLUMN note")) == [
        "djscale.W316"]


def test_drop_in_two_releases_passes() -> None:
    forget = migrations.SeparateDatabaseAndState(
        state_operations=[migrations.RemoveField("order", "note")])
    assert _ids(forget) == []
    # Next release: the deployed code (the state after the first step) no longer reads it.
    after = _state()
    forget.state_forwards("shop", after)
    drop = migrations.RunSQL("ALTER TABLE shop_order DROP COLUMN note")
    assert _ids(drop, state=after, running=RunningCode.of_state(after)) == []


def test_drop_still_used_by_the_deployed_release_is_flagged() -> None:
    """Both steps in one deploy: the code still running was built with the column."""
    forget = migrations.SeparateDatabaseAndState(
        state_operations=[migrations.RemoveField("order", "note")])
    after = _state()
    forget.state_forwards("shop", after)
    drop = migrations.RunSQL("ALTER TABLE shop_order DROP COLUMN note")
    assert _ids(drop, state=after, running=RunningCode.of_state(_state())) == [
        "djscale.W316"]


# -------------------------------------------------------------- data (W317, W318)

def test_whole_table_update_is_flagged() -> None:
    assert _ids(migrations.RunSQL("UPDATE shop_order SET note = ''")) == ["djscale.W318"]


def test_locking_statements_are_flagged() -> None:
    for sql in ("LOCK TABLE shop_order", "VACUUM FULL shop_order",
                "REINDEX TABLE shop_order", "CLUSTER shop_order USING x"):
        assert _ids(migrations.RunSQL(sql), atomic=False) == ["djscale.W317"], sql


# -------------------------------------------------------------- opt-out and messages

def test_opt_out_by_id_or_for_all() -> None:
    assert allowed(_migration(djscale_allow_unsafe=True), "djscale.W313")
    assert allowed(_migration(djscale_allow_unsafe={"djscale.W313"}), "djscale.W313")
    assert not allowed(_migration(djscale_allow_unsafe={"djscale.W313"}), "djscale.W310")
    assert not allowed(_migration(), "djscale.W310")


def test_a_finding_names_migration_operation_and_what_to_do() -> None:
    (finding,) = analyse(_migration(migrations.AlterField("order", "amount",
                                                          models.BigIntegerField())),
                         _state(), connection=connections["default"])
    assert isinstance(finding, Finding)
    assert finding.describe() == ("shop.0002_change: AlterField(order, amount): changes "
                                  "shop_order.amount from integer to bigint: a table rewrite "
                                  "under ACCESS EXCLUSIVE [djscale.W313]")
    assert "backfill" in finding.hint


# -------------------------------------------------------------- lint_migrations (no database)

def test_lint_migrations_names_a_hazard_in_history_and_fails() -> None:
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"1 migration\(s\) checked, 1 finding\(s\)"):
        call_command("lint_migrations", "contenttypes.0002", stdout=out)
    assert "drops column django_content_type.name" in out.getvalue()
    assert "[djscale.W316]" in out.getvalue()


def test_lint_migrations_passes_the_project_apps_and_honours_opt_outs() -> None:
    out = io.StringIO()
    call_command("lint_migrations", stdout=out)  # the tests' own apps
    call_command("lint_migrations", "djscale_events", stdout=out)  # 0002 opts out of W310
    assert "0 finding(s)" in out.getvalue()
