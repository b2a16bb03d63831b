"""The L1's cheap copies of plain data (djscale.cache.plain): deep copies, or not plain."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections import OrderedDict
from typing import Any

import pytest
from django.utils.safestring import mark_safe

from djscale.cache.plain import freeze

NESTED: dict[str, Any] = {
    "id": 1, "name": "chair", "price": decimal.Decimal("9.90"), "ok": True, "none": None,
    "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "uid": uuid.uuid4(),
    "tags": ["a", "b"], "attrs": {"sizes": [1, {"x": 2}]}, "pair": (1, "a"), "raw": b"x",
}


def test_a_copy_equals_the_value_and_shares_no_mutable_container() -> None:
    plain = freeze(NESTED, nbytes=100)
    assert plain is not None and plain.nbytes == 100
    copy = plain.copy()
    assert copy == NESTED
    assert copy is not NESTED
    assert copy["tags"] is not NESTED["tags"]
    assert copy["attrs"]["sizes"][1] is not NESTED["attrs"]["sizes"][1]
    copy["attrs"]["sizes"][1]["x"] = 99
    copy["tags"].append("mutated")
    assert plain.copy() == NESTED


def test_the_snapshot_does_not_follow_later_changes_of_the_original() -> None:
    value = {"tags": ["a"]}
    plain = freeze(value, nbytes=1)
    assert plain is not None
    value["tags"].append("b")
    value["new"] = 1  # type: ignore[assignment]
    assert plain.copy() == {"tags": ["a"]}


@pytest.mark.parametrize("value", ["text", mark_safe("<b>x</b>"), 3, 2.5, None, (1, ("a",)),
                                   frozenset({1, 2})])
def test_immutable_values_are_handed_out_as_they_are(value: Any) -> None:
    plain = freeze(value, nbytes=1)
    assert plain is not None
    assert plain.copy() is plain.value
    assert plain.copy() == value


@pytest.mark.parametrize("value", [
    {1, 2},                       # a set is mutable and not copied by this module
    ([1],),                       # a tuple holding a list is not immutable
    OrderedDict(a=1),             # subclasses keep to pickle
    {"obj": object()},            # unknown leaf types
    {"k": {1: object()}},         # deep inside
])
def test_values_that_are_not_plain_data_are_left_to_pickle(value: Any) -> None:
    assert freeze(value, nbytes=1) is None


def test_shared_and_cyclic_containers_are_left_to_pickle() -> None:
    shared = [1]
    assert freeze({"a": shared, "b": shared}, nbytes=1) is None
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert freeze(cyclic, nbytes=1) is None


def test_very_deep_or_very_large_trees_are_left_to_pickle() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(50):
        child: list[Any] = []
        node.append(child)
        node = child
    assert freeze(deep, nbytes=1) is None
    assert freeze([[i] for i in range(20_000)], nbytes=1) is None
    assert freeze(list(range(20_000)), nbytes=1) is not None  # leaves are cheap
