"""Turn "the database is unreachable" into a fast 503, not a 500 with a traceback.

While a primary restarts (or fails over), every write raises ``OperationalError`` /
``InterfaceError`` from the database driver. :class:`DatabaseUnavailableMiddleware`
answers those requests with **503 Service Unavailable** and ``Retry-After``, a JSON body
for API clients, and logs one line (no traceback, no connection string), so clients and
load balancers can tell "try again shortly" from a bug. Django's connection for that
alias is closed so the next request reconnects instead of reusing a broken socket.

Other exceptions pass through untouched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

__all__ = ["RETRY_AFTER_SECONDS", "DatabaseUnavailableMiddleware"]

logger = logging.getLogger("djscale.http")

RETRY_AFTER_SECONDS = 2


def _is_unavailable(exc: BaseException) -> bool:
    # ProgrammingError/IntegrityError are bugs or bad input; only connection-level
    # failures mean "unavailable". psycopg raises OperationalError for a refused or
    # dropped connection and for "the database system is shutting down / starting up".
    return isinstance(exc, OperationalError | InterfaceError)


class DatabaseUnavailableMiddleware:
    """Answer requests that failed because a database was unreachable with a fast 503."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Pass the request on; exceptions are handled in :meth:`process_exception`."""
        return self.get_response(request)

    def process_exception(self, request: HttpRequest,
                          exception: Exception) -> HttpResponse | None:
        """503 + Retry-After for connection-level database errors, else no opinion."""
        if not isinstance(exception, DatabaseError) or not _is_unavailable(exception):
            return None
        for conn in connections.all(initialized_only=True):
            try:
                usable = conn.connection is None or conn.is_usable()
            except DatabaseError:  # a server that does not answer (djscale.db.deadline)
                usable = False
            if not usable:
                with contextlib.suppress(DatabaseError):
                    conn.close()
        logger.warning("database unavailable for %s %s: %s", request.method, request.path,
                       type(exception).__name__)
        response = JsonResponse(
            {"error": "service_unavailable",
             "detail": "a database is temporarily unavailable; retry shortly"},
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        response["Cache-Control"] = "no-store"
        return response
