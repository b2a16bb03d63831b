"""A nullable column: quick, but its ALTER TABLE needs an ACCESS EXCLUSIVE lock."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("onlineapp", "0001_initial")]

    operations = [migrations.AddField("item", "flag", models.BooleanField(null=True))]
