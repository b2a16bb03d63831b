"""Seven changes written the way that locks a busy table (the guard must refuse them)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("onlineapp", "0001_initial")]

    operations = [
        # W310: an index built without CONCURRENTLY
        migrations.AddIndex("item", models.Index(fields=["user_id", "amount"],
                                                 name="item_user_amount_idx")),
        # W311: a NOT NULL column with a volatile default (a table rewrite)
        migrations.AddField("item", "token", models.FloatField(
            db_default=models.Func(function="random"))),
        # W313: a column type change (a table rewrite)
        migrations.AlterField("item", "amount", models.BigIntegerField()),
        # W314: a check constraint validated while it is added
        migrations.AddConstraint("item", models.CheckConstraint(
            condition=models.Q(amount__gte=0), name="item_amount_pos")),
        # W315: a rename of a column the running code reads
        migrations.RenameField("item", "amount", "quantity"),
        # W316: a drop of a column the running code reads
        migrations.RemoveField("item", "note"),
        # W318: a whole-table UPDATE in one transaction
        migrations.RunSQL("UPDATE onlineapp_item SET quantity = quantity + 0",
                          hints={"djscale_shards": True}),
    ]
