"""Categories and products (the main replication group: reads go to replicas)."""

from django.db import models


class Category(models.Model):
    """A product category."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)


class Product(models.Model):
    """A product with a price in cents."""

    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    name = models.CharField(max_length=200)
    price_cents = models.PositiveIntegerField()
    featured = models.BooleanField(default=False)

    def as_json(self) -> dict[str, object]:
        return {"id": self.pk, "name": self.name, "price_cents": self.price_cents,
                "featured": self.featured, "category": self.category.slug}
