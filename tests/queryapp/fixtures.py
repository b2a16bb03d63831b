"""Shared test data for the query tests: 50 authors with one book each, on every replica."""

from __future__ import annotations

from collections.abc import Iterator

from djscale import conf
from djscale.cluster.supervisor import wait_until
from tests.queryapp.models import Author, Book

BOOKS = 50


def _replicas() -> list[str]:
    return list(conf.get().replication.groups["default"].replicas)


def create_library() -> None:
    """Commit 50 authors and 50 books on the primary; wait until every replica has them."""
    authors = Author.objects.using("default").bulk_create(
        [Author(name=f"author {i}") for i in range(BOOKS)])
    Book.objects.using("default").bulk_create(
        [Book(title=f"book {i}", author=a) for i, a in enumerate(authors)])
    for alias in _replicas():
        def received(alias: str = alias) -> bool:
            return Book.objects.using(alias).count() >= BOOKS

        if not wait_until(received, 15, interval=0.02):
            raise RuntimeError(f"replica {alias} did not receive the test books")


def delete_library() -> None:
    """Remove the test data (from the primary; replicas follow)."""
    Book.objects.using("default").all().delete()
    Author.objects.using("default").all().delete()


def library(django_db_blocker: object) -> Iterator[None]:
    """Body of a module-scoped fixture: data committed once for a whole test module."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        delete_library()
        create_library()
    try:
        yield
    finally:
        with django_db_blocker.unblock():  # type: ignore[attr-defined]
            delete_library()
