"""Expand: a nullable column (metadata only: no rewrite, no scan)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("onlineapp", "0001_initial")]

    operations = [
        migrations.AddField("item", "total", models.BigIntegerField(null=True)),
    ]
