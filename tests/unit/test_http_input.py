"""InputValidationMiddleware: NUL bytes and undecodable text answer 400 before any view."""

from __future__ import annotations

import json

import pytest
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.test import RequestFactory

from djscale.http.input import DETAIL, NOT_UTF8, NUL, InputValidationMiddleware, bad_fields

rf = RequestFactory()


class View:
    """Stands for the rest of the stack; records whether it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        self.calls += 1
        return HttpResponse("ok")


def run(request: HttpRequest) -> tuple[HttpResponseBase, View]:
    view = View()
    return InputValidationMiddleware(view)(request), view


def rejected(request: HttpRequest) -> dict[str, list[str]]:
    response, view = run(request)
    assert view.calls == 0
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert isinstance(response, HttpResponse)
    body = json.loads(response.content)
    assert body["error"] == "invalid_request"
    assert body["detail"] == DETAIL
    fields: dict[str, list[str]] = body["fields"]
    return fields


def json_post(data: bytes) -> HttpRequest:
    return rf.post("/api/x", data=data, content_type="application/json")


@pytest.mark.parametrize("query", [
    "", "category=books", "q=%C3%A9t%C3%A9+x&n=1", "flag", "a=&b=2", "emoji=%F0%9F%99%82",
])
def test_ordinary_query_strings_reach_the_view(query: str) -> None:
    response, view = run(rf.get(f"/api/products/?{query}"))
    assert view.calls == 1
    assert response.status_code == 200


def test_nul_in_a_query_value_names_the_parameter() -> None:
    assert rejected(rf.get("/api/products/?category=%00x")) == {"category": [NUL]}


def test_undecodable_query_value_names_the_parameter() -> None:
    assert rejected(rf.get("/api/products/?ok=1&category=%FFbooks")) == {"category": [NOT_UTF8]}


def test_bad_parameter_name_is_named_printably() -> None:
    assert rejected(rf.get("/api/products/?a%00b=1")) == {"a\\x00b": [NUL]}
    assert rejected(rf.get("/api/products/?%FE=1")) == {"\\xfe": [NOT_UTF8]}


def test_every_bad_parameter_is_named() -> None:
    fields = rejected(rf.get("/api/products/?a=%00&b=fine&c=%C3"))
    assert fields == {"a": [NUL], "c": [NOT_UTF8]}


def test_nul_in_the_path_is_rejected() -> None:
    assert rejected(rf.get("/api/products/a%00b")) == {"path": [NUL]}


def test_undecodable_path_is_rejected() -> None:
    request = rf.get("/api/products/")
    # What a WSGI server passes for /api/products/%FF (PEP 3333: bytes as latin-1).
    request.META["PATH_INFO"] = b"/api/products/\xff".decode("latin-1")
    assert rejected(request) == {"path": [NOT_UTF8]}


def test_form_fields_with_nul_or_bad_bytes_are_named() -> None:
    request = rf.post("/api/x", data=b"name=ok&email=a%00b&bio=%C0",
                      content_type="application/x-www-form-urlencoded")
    assert rejected(request) == {"email": [NUL], "bio": [NOT_UTF8]}


def test_ordinary_form_reaches_the_view_which_can_still_read_it() -> None:
    seen: dict[str, str] = {}

    def view(request: HttpRequest) -> HttpResponse:
        seen.update(request.POST.dict())
        return HttpResponse("ok")

    request = rf.post("/api/x", data={"name": "Zoë", "n": "1"})  # multipart
    assert InputValidationMiddleware(view)(request).status_code == 200
    request = rf.post("/api/x", data=b"name=Zo%C3%AB",
                      content_type="application/x-www-form-urlencoded")
    assert InputValidationMiddleware(view)(request).status_code == 200
    assert seen["name"] == "Zoë"


def test_multipart_field_with_nul_is_named() -> None:
    assert rejected(rf.post("/api/x", data={"name": "a\x00b", "ok": "1"})) == {"name": [NUL]}


def test_json_string_with_nul_is_named_by_its_path() -> None:
    body = b'{"order": {"items": [{"name": "ok"}, {"name": "a\\u0000b"}]}, "n": 1}'
    assert rejected(json_post(body)) == {"order.items[1].name": [NUL]}


def test_json_lone_surrogate_is_not_utf8() -> None:
    assert rejected(json_post(b'{"name": "\\ud800"}')) == {"name": [NOT_UTF8]}


def test_json_key_with_nul_is_named_printably() -> None:
    assert rejected(json_post(b'{"a\\u0000": 1}')) == {"a\\x00": [NUL]}


def test_json_top_level_string_is_the_body() -> None:
    assert rejected(json_post(b'"\\u0000"')) == {"body": [NUL]}


def test_json_body_that_is_not_utf8_is_rejected() -> None:
    assert rejected(json_post(b'{"name": "\xff"}')) == {"body": [NOT_UTF8]}


def test_json_with_suffix_content_type_is_checked() -> None:
    request = rf.post("/api/x", data=b'{"a": "\\u0000"}',
                      content_type="application/merge-patch+json")
    assert rejected(request) == {"a": [NUL]}


@pytest.mark.parametrize("body", [b'{"name": "Zo\\u00eb", "tags": ["a", 1, null]}',
                                  b"not json at all", b"", b"[1, 2]"])
def test_good_or_non_json_bodies_are_left_to_the_view(body: bytes) -> None:
    response, view = run(json_post(body))
    assert view.calls == 1
    assert response.status_code == 200


def test_other_bodies_are_not_read() -> None:
    request = rf.post("/api/x", data=b"\x00\xff", content_type="application/octet-stream")
    assert bad_fields(request) == {}
