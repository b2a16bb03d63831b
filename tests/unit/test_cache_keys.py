"""Canonical argument encoding and function keys of @cached."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

import pytest

from djscale.cache.keys import canonical, function_key
from djscale.errors import CacheKeyError


def f(a: object, b: object = "2", *, c: object = None) -> None:
    """A function to key."""


def test_types_are_part_of_the_key() -> None:
    assert function_key(f, (1, "2"), {}) != function_key(f, ("1", 2), {})
    assert canonical(1) != canonical(1.0) != canonical(True)
    assert canonical((1, 2)) != canonical([1, 2])
    assert canonical(b"a") != canonical("a")
    assert canonical(None) != canonical("None")


def test_strings_cannot_forge_a_structure() -> None:
    assert canonical(("a", "b")) != canonical(("a,b",))
    assert canonical(["s1:a"]) != canonical(["a"])
    assert canonical({"a": "b", "c": "d"}) != canonical({"a": "b,c:d"})


def test_defaults_and_keyword_spelling_do_not_change_the_key() -> None:
    k = function_key(f, (1,), {})
    assert function_key(f, (1, "2"), {}) == k
    assert function_key(f, (), {"a": 1, "b": "2"}) == k
    assert function_key(f, (1,), {"c": None}) == k
    assert function_key(f, (1,), {"c": 0}) != k


def test_dicts_and_sets_are_order_independent() -> None:
    assert canonical({"a": 1, "b": 2}) == canonical({"b": 2, "a": 1})
    assert canonical({3, 1, 2}) == canonical({2, 3, 1})
    assert canonical(frozenset({1})) == canonical({1})


def test_common_value_types() -> None:
    class Color(enum.Enum):
        RED = 1

    values = [decimal.Decimal("1.10"), uuid.UUID(int=5), datetime.date(2024, 1, 2),
              datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC),
              datetime.timedelta(seconds=3), Color.RED]
    encoded = [canonical(v) for v in values]
    assert len(set(encoded)) == len(values)
    assert canonical(Color.RED) != canonical(1)


def test_objects_with_cache_key_and_unencodable_objects() -> None:
    class Product:
        def __init__(self, pk: int) -> None:
            self.pk = pk

        def __cache_key__(self) -> int:
            return self.pk

    assert canonical(Product(1)) == canonical(Product(1))
    assert canonical(Product(1)) != canonical(Product(2))
    with pytest.raises(CacheKeyError, match="__cache_key__"):
        canonical(object())


def test_bad_arguments_raise_a_clear_error() -> None:
    with pytest.raises(CacheKeyError, match="unexpected keyword"):
        function_key(f, (1,), {"nope": 1})


def test_key_shape_is_stable() -> None:
    key = function_key(f, (1,), {})
    assert key.startswith("djscale:fn:tests.unit.test_cache_keys.f:")
    assert key == function_key(f, (1,), {})  # no hash(), no id()
    assert len(key) < 200
