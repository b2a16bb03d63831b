from django.db import migrations, models

import djscale.sharding.models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("djscale_sharding", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", djscale.sharding.models.ShardedIDField(
                    editable=False, primary_key=True, serialize=False)),
                ("user_id", models.BigIntegerField()),
                ("amount", models.IntegerField()),
                ("note", models.CharField(default="", max_length=40)),
            ],
            options={"abstract": False},
        ),
    ]
