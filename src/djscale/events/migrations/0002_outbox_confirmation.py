"""Delivery confirmation of outbox rows: ``confirmed_at``, ``redeliveries`` and the index
of published, unconfirmed rows that the relay's redelivery pass reads.

As in 0001, the last operation applies the same change to the shards' outbox (hinted
``djscale_shards``), skipping what a shard already has.
"""

from typing import Any

import django.db.models
from django.db import migrations, models

FIELDS = ("confirmed_at", "redeliveries")
INDEX = "djscale_outbox_unconfirmed"


def _outbox(apps: Any, schema_editor: Any) -> tuple[Any, Any, Any]:
    """The historical outbox model, its columns and constraints (None: no table)."""
    model = apps.get_model("djscale_events", "OutboxEvent")
    conn = schema_editor.connection
    with conn.cursor() as cursor:
        if model._meta.db_table not in conn.introspection.table_names(cursor):
            return model, None, None
        columns = {c.name for c in conn.introspection.get_table_description(
            cursor, model._meta.db_table)}
        constraints = conn.introspection.get_constraints(cursor, model._meta.db_table)
    return model, columns, constraints


def add_on_shards(apps, schema_editor):  # type: ignore[no-untyped-def]
    model, columns, constraints = _outbox(apps, schema_editor)
    if columns is None:
        return
    for name in FIELDS:
        if name not in columns:
            schema_editor.add_field(model, model._meta.get_field(name))
    if INDEX not in constraints:
        index = next(i for i in model._meta.indexes if i.name == INDEX)
        schema_editor.add_index(model, index)


def remove_on_shards(apps, schema_editor):  # type: ignore[no-untyped-def]
    model, columns, constraints = _outbox(apps, schema_editor)
    if columns is None:
        return
    if INDEX in constraints:
        schema_editor.remove_index(model, next(i for i in model._meta.indexes
                                               if i.name == INDEX))
    for name in FIELDS:
        if name in columns:
            schema_editor.remove_field(model, model._meta.get_field(name))


class Migration(migrations.Migration):
    dependencies = [("djscale_events", "0001_initial")]

    # djscale.W310: the partial index is built without CONCURRENTLY (this migration shipped
    # before the guard). On a big outbox, publishing waits while it builds: apply it in a
    # quiet moment. djscale's own migrations must not block an upgrade, hence the opt-out.
    djscale_allow_unsafe = {"djscale.W310"}

    operations = [
        migrations.AddField(
            model_name="outboxevent",
            name="confirmed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="outboxevent",
            name="redeliveries",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(
                condition=django.db.models.Q(("confirmed_at__isnull", True),
                                             ("published_at__isnull", False)),
                fields=["published_at"],
                name=INDEX,
            ),
        ),
        migrations.RunPython(add_on_shards, remove_on_shards, hints={"djscale_shards": True}),
    ]
