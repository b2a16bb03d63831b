"""The outbox, inbox and dead-letter tables, on the main database and on every shard.

The shard router keeps unsharded tables off the shards; these tables must be on every
database whose transactions publish or consume events, so the last operation creates
them on the shards too (hinted ``djscale_shards``), skipping a database that has them.
"""

import uuid

import django.utils.timezone
from django.db import migrations, models

MODELS = ("OutboxEvent", "InboxEvent", "DeadLetter")


def create_on_shards(apps, schema_editor):  # type: ignore[no-untyped-def]
    existing = set(schema_editor.connection.introspection.table_names())
    for name in MODELS:
        model = apps.get_model("djscale_events", name)
        if model._meta.db_table not in existing:
            schema_editor.create_model(model)


def drop_on_shards(apps, schema_editor):  # type: ignore[no-untyped-def]
    existing = set(schema_editor.connection.introspection.table_names())
    for name in MODELS:
        model = apps.get_model("djscale_events", name)
        if model._meta.db_table in existing:
            schema_editor.delete_model(model)


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="DeadLetter",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("event_id", models.UUIDField()),
                ("consumer", models.CharField(max_length=200)),
                ("topic", models.CharField(max_length=200)),
                ("envelope", models.JSONField()),
                ("attempts", models.PositiveIntegerField()),
                ("error", models.TextField()),
                ("failed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "db_table": "djscale_dead_letter",
            },
        ),
        migrations.CreateModel(
            name="InboxEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("event_id", models.UUIDField()),
                ("consumer", models.CharField(max_length=200)),
                ("topic", models.CharField(max_length=200)),
                ("processed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "db_table": "djscale_inbox",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("consumer", "event_id"), name="djscale_inbox_once"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="OutboxEvent",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("topic", models.CharField(max_length=200)),
                ("key", models.CharField(blank=True, default="", max_length=200)),
                ("payload", models.JSONField()),
                ("headers", models.JSONField(default=dict)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("published_at", models.DateTimeField(blank=True, null=True)),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
            ],
            options={
                "db_table": "djscale_outbox",
                "indexes": [
                    models.Index(
                        condition=models.Q(("published_at__isnull", True)),
                        fields=["created_at"],
                        name="djscale_outbox_pending",
                    )
                ],
            },
        ),
        migrations.RunPython(create_on_shards, drop_on_shards, hints={"djscale_shards": True}),
    ]
