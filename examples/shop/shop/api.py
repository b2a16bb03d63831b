"""What the shop's JSON APIs share: bodies, validation errors, tokens, OpenAPI.

Tokens are signed (``django.core.signing``) with the key every service shares, so each
service checks them without calling the users service: ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse

TOKEN_SALT = "shop.auth.v1"
TOKEN_MAX_AGE = 7 * 24 * 3600

View = Callable[..., HttpResponse]


class ApiError(Exception):
    """An error answered as JSON with a status code."""

    def __init__(self, status: int, code: str, detail: str,
                 fields: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.fields = status, code, detail, fields

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.fields:
            body["fields"] = self.fields
        return JsonResponse(body, status=self.status)


def api(*methods: str) -> Callable[[View], View]:
    """Allow ``methods`` only, answer ApiError as JSON, and never read CSRF cookies."""
    def wrap(view: View) -> View:
        @wraps(view)
        def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return JsonResponse({"error": "method_not_allowed",
                                     "detail": f"use {', '.join(methods)}"}, status=405,
                                    headers={"Allow": ", ".join(methods)})
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
        inner.csrf_exempt = True  # type: ignore[attr-defined]
        return inner
    return wrap


def body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object; 400 when it is not one."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send a JSON body (application/json)")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return data


def validated(form_class: type[forms.Form], data: dict[str, Any]) -> dict[str, Any]:
    """Cleaned data of ``form_class`` over ``data``; 400 naming each bad field otherwise.

    Fields the form does not know are bad too: the schemas say which fields there are
    (``additionalProperties: false``), and a misspelt optional field should not vanish.
    """
    form = form_class(data)
    unknown = [key for key in data if key not in form.fields]
    if not form.is_valid() or unknown:
        fields = {k: [str(m) for m in v] for k, v in form.errors.items()}
        fields.update({key: ["unknown field"] for key in unknown})
        raise ApiError(400, "invalid_request", "some fields are invalid", fields)
    return dict(form.cleaned_data)


def issue_token(user_id: int, *, staff: bool = False, key: str | None = None) -> str:
    """A signed bearer token for ``user_id`` (``key``: the shared secret, default SECRET_KEY)."""
    signer = (signing.TimestampSigner(salt=TOKEN_SALT) if key is None
              else signing.TimestampSigner(key=key, salt=TOKEN_SALT, fallback_keys=[]))
    return signer.sign_object({"uid": user_id, "staff": staff})


def claims(request: HttpRequest) -> dict[str, Any]:
    """The verified claims of the request's bearer token; 401 when missing or bad."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    try:
        data = signing.loads(header[7:], salt=TOKEN_SALT, max_age=TOKEN_MAX_AGE)
    except signing.BadSignature:
        raise ApiError(401, "unauthorized", "the token is invalid or expired") from None
    return dict(data)


def require_user(request: HttpRequest, user_id: int) -> dict[str, Any]:
    """Claims of a token that belongs to ``user_id`` (or to staff); 403 otherwise."""
    data = claims(request)
    if data.get("uid") != user_id and not data.get("staff"):
        raise ApiError(403, "forbidden", "this token belongs to another user")
    return data


def require_staff(request: HttpRequest) -> dict[str, Any]:
    """Claims of a staff token; 403 otherwise."""
    data = claims(request)
    if not data.get("staff"):
        raise ApiError(403, "forbidden", "staff only")
    return data


MAX_ID = 2**63 - 1
"""The largest id a ``bigint`` column holds; larger ids name nothing (404), never a 500."""


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """``handler404`` of every service: a JSON 404 like the other errors."""
    return JsonResponse({"error": "not_found", "detail": f"no route for {request.path}"},
                        status=404)


ERROR = {"$ref": "#/components/schemas/Error"}
GATEWAY_ERROR = {"$ref": "#/components/schemas/GatewayError"}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
TEXT = {"type": "string", "pattern": "^[^\\x00]*$"}
"""Any text: djscale.http.input refuses NUL bytes (400)."""
NON_BLANK = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"
"""The pattern of text that a Django form field (which strips it) finds not empty."""
# What the gateway in front of every service may answer for any operation.
_GATEWAY_RESPONSES = {
    "429": "rate limited (the gateway)",
    "502": "the service is unreachable (the gateway)",
    "503": "the service's circuit is open (the gateway; see Retry-After)",
    "504": "the service answered too slowly (the gateway)",
}


def reply(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response: ``description`` with a JSON body (an API error by default)."""
    return {"description": description,
            "content": {"application/json": {"schema": schema or ERROR}}}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI required JSON request body of ``schema`` (no other fields allowed)."""
    schema = {**schema, "additionalProperties": False}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _complete(operation: dict[str, Any], path: str) -> dict[str, Any]:
    """Add the answers every operation can get: bad input, bad tokens, the gateway's."""
    responses = operation.setdefault("responses", {})
    takes_input = "{" in path or operation.get("parameters") or operation.get("requestBody")
    if takes_input:
        # djscale.http.input answers 400 for NUL bytes or undecodable text in any input.
        responses.setdefault("400", reply("invalid input: the fields are named"))
    if "{" in path:
        responses.setdefault("404", reply("no such resource"))
    if operation.get("requestBody"):
        responses.setdefault("413", reply("body too large (the gateway)", GATEWAY_ERROR))
        responses.setdefault("415", reply("the body is not JSON (application/json)"))
    if operation.get("security"):
        responses.setdefault("401", reply("no token, or an invalid or expired one"))
    for status, description in _GATEWAY_RESPONSES.items():
        responses.setdefault(status, reply(description, GATEWAY_ERROR))
    return operation


def openapi(title: str, paths: dict[str, Any],
            schemas: dict[str, Any] | None = None) -> View:
    """A view serving the service's OpenAPI 3.1 document.

    Every operation gets the answers it can get without the view saying so: 400 (bad
    input, :mod:`djscale.http.input`), 401 when it needs a token, 404 with a path
    parameter, 413/415 with a body, and the gateway's 429/502/503/504.
    """
    paths = {path: {method: _complete(op, path) if method != "parameters" else op
                    for method, op in item.items()}
             for path, item in paths.items()}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1.0.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string"}, "detail": {"type": "string"},
                        "fields": {"type": "object", "additionalProperties": {
                            "type": "array", "items": {"type": "string"}}}}},
                "GatewayError": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["status", "code", "message"],
                        "properties": {"status": {"type": "integer"},
                                       "code": {"type": "string"},
                                       "message": {"type": "string"},
                                       "service": {"type": "string"},
                                       "request_id": {"type": "string"}}}}},
                **(schemas or {}),
            },
        },
        "paths": paths,
    }

    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(doc)
    return view
