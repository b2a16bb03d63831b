"""Repeated queries are named after the model field they load."""

from __future__ import annotations

from djscale.queries.relations import relation_from_sql
from djscale.queries.shape import first_filter


def _relation(sql: str) -> tuple[str, str, str] | None:
    flt = first_filter(sql)
    assert flt is not None
    rel = relation_from_sql(flt)
    return (rel.model, rel.field, rel.hint) if rel else None


def test_filter_on_a_foreign_key_column_is_the_reverse_relation() -> None:
    sql = ('SELECT "queryapp_book"."id" FROM "queryapp_book" '
           'WHERE "queryapp_book"."author_id" = %s')
    assert _relation(sql) == ("Author", "book_set",
                              "Author.objects.prefetch_related('book_set')")


def test_lookup_by_primary_key_names_the_model_and_the_foreign_keys_to_it() -> None:
    sql = 'SELECT "queryapp_author"."id" FROM "queryapp_author" WHERE "queryapp_author"."id" = %s'
    model, field, hint = _relation(sql)  # type: ignore[misc]
    assert (model, field) == ("Author", "id")
    assert "in_bulk" in hint and "Book.objects.select_related('author')" in hint


def test_filter_on_a_many_to_many_table_is_the_many_to_many_field() -> None:
    sql = ('SELECT "queryapp_tag"."id" FROM "queryapp_tag" INNER JOIN "queryapp_book_tags" '
           'ON ("queryapp_tag"."id" = "queryapp_book_tags"."tag_id") '
           'WHERE "queryapp_book_tags"."book_id" = %s')
    assert _relation(sql) == ("Book", "tags", "Book.objects.prefetch_related('tags')")


def test_unknown_tables_map_to_nothing() -> None:
    assert _relation('SELECT 1 FROM "nope" WHERE "nope"."id" = %s') is None
