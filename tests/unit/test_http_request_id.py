"""Request ids: accepted or created, in the response, the context and the logs."""

from __future__ import annotations

import json
import logging

from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from djscale.http import current_request_id
from djscale.http.request_id import (
    JsonFormatter,
    RequestIdFilter,
    RequestIdMiddleware,
    use_request_id,
    valid_request_id,
)


def _run(headers: dict[str, str]) -> tuple[HttpResponse, list[str | None]]:
    seen: list[str | None] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(current_request_id())
        return HttpResponse("ok")

    request = RequestFactory().get("/", headers=headers)
    response = RequestIdMiddleware(view)(request)
    assert isinstance(response, HttpResponse)
    return response, seen


def test_a_well_formed_incoming_id_is_kept_and_echoed() -> None:
    response, seen = _run({"X-Request-ID": "abc-123"})
    assert response["X-Request-ID"] == "abc-123"
    assert seen == ["abc-123"]


def test_a_missing_id_is_created() -> None:
    response, seen = _run({})
    assert len(response["X-Request-ID"]) == 32
    assert seen == [response["X-Request-ID"]]


def test_a_malformed_incoming_id_is_replaced() -> None:
    response, _ = _run({"X-Request-ID": "bad id\r\nSet-Cookie: x"})
    assert response["X-Request-ID"] != "bad id\r\nSet-Cookie: x"
    assert valid_request_id(response["X-Request-ID"])
    assert not valid_request_id("x" * 500)


def test_the_id_is_cleared_after_the_request() -> None:
    _run({"X-Request-ID": "abc"})
    assert current_request_id() is None


def test_use_request_id_sets_and_restores_for_tasks() -> None:
    with use_request_id("task-1") as rid:
        assert rid == "task-1" == current_request_id()
        with use_request_id(None) as inner:
            assert inner != "task-1"
        assert current_request_id() == "task-1"
    assert current_request_id() is None


def test_json_formatter_puts_request_id_and_extras_in_one_line() -> None:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    record.order_id = 7
    with use_request_id("req-9"):
        RequestIdFilter().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "hello x"
    assert data["request_id"] == "req-9"
    assert data["order_id"] == 7
    assert data["level"] == "WARNING"


def test_logging_config_writes_json_lines_with_the_request_id() -> None:
    import io
    import logging.config

    from djscale.http.request_id import logging_config

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        logging.config.dictConfig(logging_config(json=True))
        handler = root.handlers[-1]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        with use_request_id("rid-42"):
            logging.getLogger("edge.test").info("paid", extra={"order": 3})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "rid-42" and line["order"] == 3 and line["message"] == "paid"
