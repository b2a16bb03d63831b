"""Query shapes: values out, lists collapsed, first table and filter read."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django import Settings

from djscale.errors import ConfigurationError
from djscale.queries.config import query_config
from djscale.queries.shape import first_filter, is_select, shape


def test_two_lookups_with_different_ids_have_the_same_shape() -> None:
    a = 'SELECT "a"."id" FROM "a" WHERE "a"."id" = 17 LIMIT 21'
    b = 'SELECT "a"."id" FROM "a" WHERE "a"."id" = %s LIMIT 21'
    assert shape(a) == shape(b) == 'SELECT "a"."id" FROM "a" WHERE "a"."id" = ? LIMIT ?'


def test_in_lists_of_any_length_have_the_same_shape() -> None:
    two = 'SELECT * FROM "t" WHERE "t"."id" IN (%s, %s)'
    three = 'SELECT * FROM "t" WHERE "t"."id" IN (%s, %s, %s)'
    assert shape(two) == shape(three) == 'SELECT * FROM "t" WHERE "t"."id" IN (...)'


def test_strings_and_whitespace_are_normalised_but_identifiers_with_digits_kept() -> None:
    sql = 'SELECT  "t2"."c1"\n FROM "t2" WHERE "t2"."name" = \'it\'\'s\''
    assert shape(sql) == 'SELECT "t2"."c1" FROM "t2" WHERE "t2"."name" = ?'


def test_multi_row_values_collapse() -> None:
    sql = 'INSERT INTO "t" ("a", "b") VALUES (%s, %s), (%s, %s), (%s, %s)'
    assert shape(sql) == 'INSERT INTO "t" ("a", "b") VALUES (...)'


def test_first_filter_reads_table_and_where_column() -> None:
    sql = ('SELECT "app_book"."id" FROM "app_book" INNER JOIN "x" ON (1) '
           'WHERE ("app_book"."author_id" = %s AND "x"."y" = %s)')
    flt = first_filter(sql)
    assert flt is not None
    assert (flt.table, flt.where_table, flt.where_column) == (
        "app_book", "app_book", "author_id")
    assert first_filter('SELECT 1') is None


def test_only_reads_are_selects() -> None:
    assert is_select("  SELECT 1")
    assert is_select("WITH x AS (SELECT 1) SELECT * FROM x")
    assert not is_select('UPDATE "t" SET "a" = 1')


@pytest.mark.parametrize("raw, key", [
    ({"N_PLUS_ONE": "loud"}, "N_PLUS_ONE"),
    ({"THRESHOLD": 1}, "THRESHOLD"),
    ({"SAMPLE_RATE": 2}, "SAMPLE_RATE"),
    ({"BUDGETS": {"x": -1}}, "BUDGETS"),
    ({"IGNORE_PATHS": "src"}, "IGNORE_PATHS"),
])
def test_bad_query_settings_name_the_key(settings: Settings, raw: dict[str, Any],
                                         key: str) -> None:
    settings.DJSCALE = {"QUERIES": raw}
    with pytest.raises(ConfigurationError, match=key):
        query_config()


def test_defaults_raise_in_debug_and_log_sampled_otherwise(settings: Settings) -> None:
    settings.DJSCALE = {"QUERIES": {}}
    settings.DEBUG = True
    assert (query_config().n_plus_one, query_config().sample_rate) == ("raise", 1.0)
    settings.DEBUG = False
    assert (query_config().n_plus_one, query_config().sample_rate) == ("log", 0.1)


def test_bad_query_settings_are_a_system_check_error(settings: Settings) -> None:
    from djscale.conf import check_settings

    settings.DJSCALE = {"QUERIES": {"BUDGET": "sometimes"}}
    [error] = check_settings()
    assert error.id == "djscale.E110" and "BUDGET" in error.msg
    settings.DJSCALE = {"QUERIES": {}}
    assert check_settings() == []
