"""Models for the query-inspection tests: authors, their books, and tags on books."""

from django.db import models


class Author(models.Model):
    """Writes books."""

    name = models.CharField(max_length=60)


class Tag(models.Model):
    """A label on books (many-to-many)."""

    label = models.CharField(max_length=30)


class Book(models.Model):
    """One book, by one author (a foreign key), with tags."""

    title = models.CharField(max_length=100)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    tags = models.ManyToManyField(Tag, blank=True)
