"""Views for the cache tests and the cache benchmark (a DB-backed page, cached or not)."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import cache_page

from djscale.cache import cached
from tests.testapp.models import Note

COMPUTED = {"count": 0}


@cached(timeout=300, name="tests.cache_support.square")
def square(n: int) -> dict[str, int]:
    """A 'slow' computation counted in COMPUTED."""
    COMPUTED["count"] += 1
    return {"n": n, "square": n * n}


def square_view(request: HttpRequest, n: int) -> JsonResponse:
    """Answer from the @cached function."""
    return JsonResponse(square(n))


@cache_page(60)
def page_view(request: HttpRequest) -> JsonResponse:
    """A whole response cached by Django's cache_page (through TieredCache)."""
    COMPUTED["count"] += 1
    return JsonResponse({"page": True})


def notes_page(author: str) -> bytes:
    """The rendered JSON of an author's page: latest 50 notes, their count, the authors."""
    notes = list(Note.objects.filter(author=author).order_by("-id")
                 .values("id", "author", "text")[:50])
    total = Note.objects.filter(author=author).count()
    authors = list(Note.objects.values_list("author", flat=True).distinct().order_by("author"))
    return json.dumps({"author": author, "total": total, "authors": authors,
                       "notes": notes}).encode()


@cached(timeout=60, name="tests.cache_support.notes_page")
def cached_notes_page(author: str) -> bytes:
    """:func:`notes_page`, cached (the rendered bytes, as a page cache would keep them)."""
    return notes_page(author)


def notes_uncached(request: HttpRequest, author: str) -> HttpResponse:
    """DB-backed page: three queries on PostgreSQL, rendered on every request."""
    return HttpResponse(notes_page(author), content_type="application/json")


def notes_cached(request: HttpRequest, author: str) -> HttpResponse:
    """The same page from the tiered cache."""
    return HttpResponse(cached_notes_page(author), content_type="application/json")
