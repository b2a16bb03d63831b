"""An index CONCURRENTLY: waits for the writers it started with, under lock_timeout."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("onlineapp", "0002_item_flag")]

    operations = [AddIndexConcurrently("item", models.Index(fields=["note"],
                                                            name="item_note_idx"))]
