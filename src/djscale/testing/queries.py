"""pytest helper: fail a test that runs more queries than its budget, listing them.

::

    from djscale.testing.queries import assert_max_queries

    def test_product_list_is_cheap(client):
        with assert_max_queries(3):
            client.get("/products/")

or with the ``assert_max_queries`` fixture (same callable). Queries count on every
database alias they ran on (primary, replicas, shards): a query routed to a replica
counts as much as one on the primary. On failure the test fails with every query, as
``[alias] SQL``. Unlike pytest-django's ``django_assert_max_num_queries`` it is not
limited to one connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from djscale.queries.budget import QueryBudget

__all__ = ["assert_max_queries", "assert_max_queries_fixture"]


@contextmanager
def assert_max_queries(n: int, *, where: str = "") -> Iterator[QueryBudget]:
    """Fail the current test when the block runs more than ``n`` queries (all aliases)."""
    from djscale.queries.budget import QueryBudget, budget_message

    budget = QueryBudget(n, mode="off", where=where)
    with budget:
        yield budget
    if budget.exceeded:
        pytest.fail(f"query budget exceeded: {budget_message(n, budget, where)}",
                    pytrace=False)


@pytest.fixture(name="assert_max_queries")
def assert_max_queries_fixture() -> Callable[..., AbstractContextManager[QueryBudget]]:
    """The :func:`assert_max_queries` context manager, as a fixture."""
    return assert_max_queries
