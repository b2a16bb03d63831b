"""One table, so the demo has something to write and to read back."""

from django.db import models


class Visit(models.Model):
    """A request that wrote to the primary."""

    app_server = models.CharField(max_length=40)
    created = models.DateTimeField(auto_now_add=True)
