"""pytest plugin (auto-loaded through the ``pytest11`` entry point).

Fixtures:

- ``djscale_cluster``: the shared test cluster booted by the settings module
  (:func:`djscale.testing.shared_cluster`); skips the test when there is none.
- ``djscale_cluster_factory``: boots independent clusters, stopped at session end.

Every cluster booted in the session is stopped at session end, even after failures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from djscale import testing
from djscale.cluster import LocalCluster
from djscale.testing.queries import assert_max_queries_fixture  # noqa: F401 - a fixture


@pytest.fixture(scope="session")
def djscale_cluster() -> LocalCluster:
    """The shared cluster that the test settings module booted."""
    if testing._shared is None:
        pytest.skip("no shared djscale test cluster (the settings module did not boot one)")
    return testing._shared


@pytest.fixture(scope="session")
def djscale_cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[testing.ClusterFactory]:
    """Boot extra clusters for one session; all are stopped and deleted afterwards."""
    factory = testing.ClusterFactory(tmp_path_factory.mktemp("clusters"))
    try:
        yield factory
    finally:
        factory.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every cluster this process booted."""
    testing.stop_all()
