"""Views for the cache tests and the cache benchmark (a DB-backed page, cached or not)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
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


def _notes(author: str) -> list[dict[str, object]]:
    rows = Note.objects.filter(author=author).order_by("-id").values("id", "author", "text")[:50]
    return list(rows)


@cached(timeout=60, name="tests.cache_support.notes")
def cached_notes(author: str) -> list[dict[str, object]]:
    """The notes of ``author``, cached."""
    return _notes(author)


def notes_uncached(request: HttpRequest, author: str) -> JsonResponse:
    """DB-backed page: 50 notes straight from PostgreSQL."""
    return JsonResponse({"notes": _notes(author)})


def notes_cached(request: HttpRequest, author: str) -> JsonResponse:
    """The same page from the tiered cache."""
    return JsonResponse({"notes": cached_notes(author)})
