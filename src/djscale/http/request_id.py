"""Request ids: one id per request, in the logs, the response, service calls and tasks.

:class:`RequestIdMiddleware` takes the id the load balancer (or the caller) sent in
``X-Request-ID`` when it is well formed, or makes a new one, keeps it in a
:class:`~contextvars.ContextVar` for the duration of the request (so it works in sync and
async views and in threads started with ``contextvars.copy_context()``), and returns it in
the response header. Other code reads it with :func:`current_request_id`: the service
client sends it on, the Celery integration puts it into task headers and a task restores
it with :func:`use_request_id`.

Logging: :class:`RequestIdFilter` adds ``record.request_id`` to every record;
:class:`JsonFormatter` writes one JSON object per line (the structured logging option).
``LOGGING = logging_config(json=True)`` is the short way to get this::

    LOGGING = {
        "version": 1,
        "filters": {"request_id": {"()": "djscale.http.request_id.RequestIdFilter"}},
        "formatters": {"json": {"()": "djscale.http.request_id.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "filters": ["request_id"]}},
        "root": {"handlers": ["console"], "level": "INFO"},
    }

This module must not do I/O beyond what logging handlers do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest, HttpResponseBase

__all__ = [
    "HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "current_request_id",
    "logging_config",
    "new_request_id",
    "use_request_id",
    "valid_request_id",
]

HEADER = "X-Request-ID"
"""The HTTP header carrying the request id (in and out)."""

_META_KEY = "HTTP_X_REQUEST_ID"
# Ids from outside end up in logs and headers: accept only short, plain tokens.
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}$")

_current: ContextVar[str | None] = ContextVar("djscale_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request (or task) being handled in this context, or None."""
    return _current.get()


def new_request_id() -> str:
    """A fresh random request id (32 hex digits)."""
    return uuid.uuid4().hex


def valid_request_id(value: object) -> bool:
    """True when ``value`` may be used as a request id (1-128 safe characters)."""
    return isinstance(value, str) and bool(_VALID.match(value))


@contextlib.contextmanager
def use_request_id(value: str | None = None) -> Iterator[str]:
    """Make ``value`` (or a new id when it is missing or malformed) the current id.

    For code that runs outside a request, e.g. a Celery task restoring the id of the
    request that queued it::

        with use_request_id(task.request.get("request_id")):
            ...
    """
    rid = value if value is not None and valid_request_id(value) else new_request_id()
    token = _current.set(rid)
    try:
        yield rid
    finally:
        _current.reset(token)


class RequestIdMiddleware:
    """Accept or create ``X-Request-ID``; expose it to logs and return it in the response."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Run the request with its id set, and echo the id in the response."""
        incoming = request.META.get(_META_KEY)
        with use_request_id(incoming) as rid:
            request.META[_META_KEY] = rid
            request.request_id = rid  # type: ignore[attr-defined]
            response = self.get_response(request)
            response[HEADER] = rid
            return response


class RequestIdFilter(logging.Filter):
    """Add ``request_id`` (or ``"-"``) to every log record passing through."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "request_id", "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, extras.

    Values given with ``extra=`` are included when JSON can represent them (else as
    their ``repr``); exceptions go into ``exc_info`` as text.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        data: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=repr, ensure_ascii=False)


def logging_config(*, json: bool = True, level: str = "INFO") -> dict[str, Any]:
    """A ``LOGGING`` setting: console output with request ids, as JSON lines or text.

    Text lines look like ``2026-01-01 12:00:00,000 INFO [<request id>] logger: message``.
    """
    formatter: dict[str, Any] = (
        {"()": "djscale.http.request_id.JsonFormatter"} if json else
        {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "djscale.http.request_id.RequestIdFilter"}},
        "formatters": {"djscale": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "djscale",
                                 "filters": ["request_id"]}},
        "root": {"handlers": ["console"], "level": level},
    }
