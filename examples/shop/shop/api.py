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
    """Cleaned data of ``form_class`` over ``data``; 400 naming each bad field otherwise."""
    form = form_class(data)
    if not form.is_valid():
        fields = {k: [str(m) for m in v] for k, v in form.errors.items()}
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


def openapi(title: str, paths: dict[str, Any]) -> View:
    """A view serving a small OpenAPI 3.1 document."""
    doc = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1.0.0"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }

    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(doc)
    return view
