"""Views that say which app server and which database answered."""

from __future__ import annotations

import os

from django.db import connections, router
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from demo.models import Visit


def _server_port(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def whoami(request: HttpRequest) -> JsonResponse:
    """GET: read the visit count through the router (a replica) and say who answered."""
    alias = router.db_for_read(Visit)
    count = Visit.objects.count()
    return JsonResponse({
        "app_server": os.environ.get("DJSCALE_SERVICE", "?"),
        "pid": os.getpid(),
        "read_db": alias,
        "read_db_port": _server_port(alias or "default"),
        "visits_seen": count,
    })


@csrf_exempt
def visit(request: HttpRequest) -> JsonResponse:
    """POST: write a row (to the primary) and say who answered."""
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    server = os.environ.get("DJSCALE_SERVICE", "?")
    alias = router.db_for_write(Visit) or "default"
    port = _server_port(alias)
    # The write is the last database operation: once it commits, the answer is 201.
    Visit.objects.create(app_server=server)
    return JsonResponse({"app_server": server, "write_db": alias, "write_db_port": port},
                        status=201)
