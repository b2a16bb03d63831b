"""Fill ``total`` in primary-key batches, each in its own short transaction."""

from django.db import migrations
from django.db.models import F, Q

from djscale.db import backfill


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("onlineapp", "0003_item_total_index")]

    operations = [
        backfill.operation("onlineapp.Item", {"total": F("amount") * 100},
                           where=Q(total__isnull=True)),
    ]
