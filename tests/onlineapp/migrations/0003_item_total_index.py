"""An index built CONCURRENTLY: reads and writes go on while it is built."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("onlineapp", "0002_item_total")]

    operations = [
        AddIndexConcurrently("item", models.Index(fields=["user_id", "amount"],
                                                  name="item_user_amount_idx")),
    ]
