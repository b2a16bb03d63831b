"""Views that say which app server and which database answered, and a write with an event."""

from __future__ import annotations

import os

from django.core.cache import caches
from django.db import connections, router, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from demo.consumers import MAX_WORK_MS
from demo.models import Note, NoteIndexed, Visit
from djscale.cache import TieredCache
from djscale.edge import add_tags
from djscale.events import publish
from djscale.http.cache_control import public_cache

VISITS_KEY = "demo:visits"


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
    caches["default"].delete(VISITS_KEY)  # cache-aside: the count below is recomputed on next read
    return JsonResponse({"app_server": server, "write_db": alias, "write_db_port": port},
                        status=201)


def visits(request: HttpRequest) -> JsonResponse:
    """GET: the number of visits, cached (L1, then Redis), and whether that is stale.

    ``source`` says where the value came from (``l1``, ``redis``, or ``db`` when it was
    computed: a miss, or Redis unreachable); ``stale`` compares it with the primary's
    count read just before (only meaningful while nobody writes: the chaos scenarios'
    check after the load). ``l1_flushes`` counts this process's whole-L1 flushes by reason
    (a lost or regained subscription, Redis answering again) and ``l1_flushed_entries``
    the entries they dropped: the chaos report compares them before and after a fault.
    """
    cache = caches["default"]
    actual = Visit.objects.using("default").count()
    in_l1 = isinstance(cache, TieredCache) and cache.l1.get(cache.make_key(VISITS_KEY))
    value = cache.get(VISITS_KEY)
    source = "l1" if in_l1 and value is not None else "redis"
    if value is None:
        value, source = Visit.objects.using("default").count(), "db"
        cache.set(VISITS_KEY, value, timeout=300)
    stats = cache.stats() if isinstance(cache, TieredCache) else {}
    return JsonResponse({"app_server": os.environ.get("DJSCALE_SERVICE", "?"),
                         "pid": os.getpid(), "visits": value, "source": source,
                         "stale": value != actual,
                         "l1_flushes": stats.get("l1_flushes", {}),
                         "l1_flushed_entries": stats.get("l1_flushed_entries", 0)})


@csrf_exempt
def notes(request: HttpRequest) -> JsonResponse:
    """POST: create a note and its ``note_created`` event in one transaction; GET: counts.

    ``?work_ms=N`` (0-2000) asks the consumer to spend N ms on the event, to simulate
    a slow consumer (chaos scenarios kill a worker in the middle of it).
    """
    alias = router.db_for_write(Note) or "default"
    if request.method == "GET":
        return JsonResponse({"notes": Note.objects.using(alias).count(),
                             "indexed": NoteIndexed.objects.using(alias).count()})
    if request.method != "POST":
        return JsonResponse({"error": "GET or POST only"}, status=405)
    raw = request.GET.get("work_ms", "0")
    if not raw.isdigit() or int(raw) > MAX_WORK_MS:
        return JsonResponse({"error": f"work_ms must be an integer from 0 to {MAX_WORK_MS}"},
                            status=400)
    with transaction.atomic(using=alias):
        note = Note.objects.using(alias).create(text=request.GET.get("text", "")[:200])
        event_id = publish("note_created", {"note_id": note.id, "work_ms": int(raw)},
                           using=alias)
    # The commit above is the last database operation: once it is done, the answer is 201.
    return JsonResponse({"id": note.id, "event_id": str(event_id)}, status=201)


@public_cache(max_age=2, s_maxage=5, stale_while_revalidate=1)
def catalog(request: HttpRequest) -> JsonResponse:
    """GET: the same page for every anonymous visitor (shared caches may keep it 5 s)."""
    response = JsonResponse({"page": "catalog", "notes": Note.objects.count()})
    add_tags(response, Note)
    return response


def me(request: HttpRequest) -> JsonResponse:
    """GET: who is logged in (personal: never from a shared cache)."""
    user = request.user
    return JsonResponse({"user": user.get_username() if user.is_authenticated else None})


@public_cache(max_age=30)
def welcome(request: HttpRequest) -> JsonResponse:
    """GET: opts in to public caching but hands out a cookie: must never be shared."""
    response = JsonResponse({"page": "welcome"})
    response.set_cookie("first_visit", os.urandom(4).hex())
    return response


MAX_WAIT_MS = 1000


def wait(request: HttpRequest) -> JsonResponse:
    """GET: a read that spends ``?ms=N`` (0-1000) waiting on a replica, as a slow query would.

    Its time is I/O, not CPU: a sync gunicorn worker answers at most ``1000 / N`` of these
    a second whatever the machine, which is what the autoscaling benchmark needs to show
    that adding app servers adds capacity even on a small shared machine.
    """
    raw = request.GET.get("ms", "0")
    if not raw.isdigit() or int(raw) > MAX_WAIT_MS:
        return JsonResponse({"error": f"ms must be an integer from 0 to {MAX_WAIT_MS}"},
                            status=400)
    alias = router.db_for_read(Visit) or "default"
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [int(raw) / 1000])
    return JsonResponse({"app_server": os.environ.get("DJSCALE_SERVICE", "?"),
                         "waited_ms": int(raw)})
