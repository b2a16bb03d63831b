"""djscale.db.multihost: hosts whose connect timed out are tried last (pure logic)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from djscale.db import multihost

PARAMS = {"host": "10.0.0.2,10.0.0.3,10.0.0.4", "port": "5432,5433,5434", "dbname": "d"}
TIMEOUT = ('connection failed: Multiple connection attempts failed. All failures were:\n'
           '- host: \'10.0.0.2\', port: \'5432\', hostaddr: \'10.0.0.2\': connection failed: '
           'connection to server at "10.0.0.2", port 5432 failed: timeout expired\n'
           '- host: \'10.0.0.3\', port: \'5433\', hostaddr: \'10.0.0.3\': connection failed: '
           'connection to server at "10.0.0.3", port 5433 failed: session is read-only')


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    multihost._slow.clear()
    yield
    multihost._slow.clear()


def test_the_configured_order_stays_until_a_host_times_out() -> None:
    assert multihost.ordered(PARAMS) == PARAMS
    assert multihost.ordered({"host": "db", "port": "5432"}) == {"host": "db", "port": "5432"}


def test_a_host_a_failed_connect_names_as_timed_out_goes_last() -> None:
    multihost.note_timeouts(PARAMS, RuntimeError(TIMEOUT))
    assert multihost.slow_hosts() == {("10.0.0.2", "5432")}  # read-only is no timeout
    moved = multihost.ordered(PARAMS)
    assert moved["host"] == "10.0.0.3,10.0.0.4,10.0.0.2"
    assert moved["port"] == "5433,5434,5432"
    assert moved["dbname"] == "d"


def test_a_named_host_with_its_address_in_the_message_is_recognised() -> None:
    params = {"host": "db,db-replica1", "port": "5432"}
    text = 'connection to server at "db" (10.0.0.2), port 5432 failed: timeout expired'
    multihost.note_timeouts(params, RuntimeError(text))
    assert multihost.ordered(params)["host"] == "db-replica1,db"


def test_a_slow_successful_connect_marks_the_hosts_it_waited_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ordered() looks at the time, the connect starts at 100 and ends 2.1 s later.
    clock = iter([100.0, 100.0, 102.1, 102.1])
    monkeypatch.setattr(multihost, "_clock", lambda: next(clock))
    seen: list[dict[str, Any]] = []

    def open_(params: dict[str, Any]) -> SimpleNamespace:
        seen.append(params)
        return SimpleNamespace(info=SimpleNamespace(host="10.0.0.3", port=5433))

    multihost.connect(open_, PARAMS)
    assert seen == [PARAMS]
    assert ("10.0.0.2", "5432") in multihost._slow


def test_a_failed_connect_is_raised_and_teaches_the_order() -> None:
    def open_(params: dict[str, Any]) -> object:
        raise OSError(TIMEOUT)

    with pytest.raises(OSError):
        multihost.connect(open_, PARAMS)
    assert multihost.ordered(PARAMS)["host"].endswith("10.0.0.2")
