"""Bad input stops at the edge: NUL bytes and undecodable text answer 400, naming the field.

Django decodes query strings and form bodies leniently (bytes that are not UTF-8 become
U+FFFD) and keeps NUL bytes; ``json.loads`` turns ``"\\u0000"`` into a NUL and
``"\\ud800"`` into a lone surrogate. None of these can be stored in PostgreSQL ``text``
(psycopg raises), so a view that filters or saves such a value answers 500.
:class:`InputValidationMiddleware` looks at every input before any view runs:

- the path (``/api/x%00``, ``/api/%FF``): field ``path``;
- every query string parameter name and value: the parameter's name;
- ``application/x-www-form-urlencoded`` bodies: the field's name;
- ``multipart/form-data`` POST bodies: the names of non-file fields holding a NUL;
- JSON bodies (``application/json``, ``*/*+json``): the body must be UTF-8, and no string
  in it (keys included) may hold a NUL or a lone surrogate; the field is named by its path
  in the document (``items[2].name``). A body that is not JSON at all is left to the view,
  which knows what it expects.

Any of these answers ``400`` with a JSON body in the shape the example shop uses for its
own validation errors::

    {"error": "invalid_request",
     "detail": "some fields hold a NUL byte or text that is not UTF-8",
     "fields": {"category": ["contains a NUL byte"]}}

Put it early in ``MIDDLEWARE``, after :class:`~djscale.http.request_id.RequestIdMiddleware`
and the metrics middleware (so rejected requests are counted and carry their id) and before
sessions, authentication and views. It reads the body of form and JSON requests (bounded by
``DATA_UPLOAD_MAX_MEMORY_SIZE``, as any ``request.POST`` access is); Django keeps it, so
views read it again as usual.

This module must not do I/O and must not decide what a field is allowed to contain beyond
"text that can be stored": validation of meaning stays in the views.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from django.http import HttpRequest, HttpResponseBase, JsonResponse

__all__ = ["InputValidationMiddleware", "bad_fields"]

NUL = "contains a NUL byte"
"""The message of a field holding a NUL byte (U+0000)."""
NOT_UTF8 = "is not valid UTF-8"
"""The message of a field whose bytes are not UTF-8 (or that holds a lone surrogate)."""
DETAIL = "some fields hold a NUL byte or text that is not UTF-8"
"""The ``detail`` of the 400 answer."""

_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


def _text_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be stored as text (None when it can)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    return NUL if "\x00" in text else None


def _name(raw: bytes) -> str:
    """A printable name for a field, whatever its bytes."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _printable(text: str) -> str:
    """``text`` with NULs and lone surrogates spelled out, safe in a JSON answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _query_problems(query: bytes) -> Iterator[tuple[str, str]]:
    """``(field, message)`` of each bad name or value of a ``a=1&b=2`` string."""
    for pair in query.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" "))
        value = unquote_to_bytes(raw_value.replace(b"+", b" "))
        problem = _text_problem(name) or _text_problem(value)
        if problem:
            yield _name(name), problem


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return NOT_UTF8
    return None


def _json_problems(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(path, message)`` of each bad string (key or value) in a decoded JSON document."""
    if isinstance(value, str):
        problem = _string_problem(value)
        if problem:
            yield where or "body", problem
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            problem = _string_problem(key)
            if problem:
                yield _printable(path), problem
                continue
            yield from _json_problems(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_problems(item, f"{where}[{i}]")


def _raw(request: HttpRequest, key: str) -> bytes:
    """The bytes of a WSGI/ASGI text value of ``request.META`` (latin-1 per PEP 3333)."""
    value = request.META.get(key, "")
    if isinstance(value, bytes):
        return value
    try:
        return str(value).encode("latin-1")
    except UnicodeEncodeError:  # an ASGI server that already decoded it as UTF-8
        return str(value).encode("utf-8", "surrogateescape")


def _path_bytes(request: HttpRequest) -> bytes:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("raw_path"), bytes):
        return unquote_to_bytes(scope["raw_path"])
    return _raw(request, "PATH_INFO")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


def bad_fields(request: HttpRequest) -> dict[str, list[str]]:
    """Each input field of ``request`` holding a NUL byte or undecodable text, with why.

    Empty when the request is fine. Reads the body of form and JSON requests.
    """
    fields: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        messages = fields.setdefault(field, [])
        if message not in messages:
            messages.append(message)

    problem = _text_problem(_path_bytes(request))
    if problem:
        add("path", problem)
    for field, message in _query_problems(_raw(request, "QUERY_STRING")):
        add(field, message)
    content_type = (request.content_type or "").lower()
    if content_type == _FORM:
        for field, message in _query_problems(request.body):
            add(field, message)
    elif content_type == _MULTIPART and request.method == "POST":
        for key, values in request.POST.lists():
            for value in [key, *values]:
                if "\x00" in value:
                    add(_printable(key), NUL)
    elif _is_json(content_type):
        raw = request.body
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            add("body", NOT_UTF8)
            return fields
        try:
            document = json.loads(text) if text.strip() else None
        except ValueError:
            return fields  # not JSON: the view says what it expected
        for field, message in _json_problems(document, ""):
            add(field, message)
    return fields


class InputValidationMiddleware:
    """Answer 400 (JSON, fields named) to NUL bytes or undecodable text in any input."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Reject the request when :func:`bad_fields` finds any; else pass it on."""
        fields = bad_fields(request)
        if fields:
            return JsonResponse({"error": "invalid_request", "detail": DETAIL,
                                 "fields": fields}, status=400)
        return self.get_response(request)
