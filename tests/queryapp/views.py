"""Views for the query-inspection tests: a lazy loop, its fix, and deliberate loops.

The line numbers of the lazy loops matter: tests assert the detector names them.
"""

from __future__ import annotations

from django import forms
from django.core.files.storage import default_storage
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from djscale.queries import allow_n_plus_one, max_queries
from tests.queryapp.models import Author, Book


def books_lazy(request: HttpRequest) -> JsonResponse:
    """The classic N+1: one query for the books, then one per book for its author."""
    names = []
    for book in Book.objects.order_by("id")[:50]:
        names.append(book.author.name)  # LAZY-FORWARD
    return JsonResponse({"authors": names})


def books_eager(request: HttpRequest) -> JsonResponse:
    """The fix: one query with a join."""
    names = [b.author.name for b in Book.objects.select_related("author").order_by("id")[:50]]
    return JsonResponse({"authors": names})


def authors_lazy(request: HttpRequest) -> JsonResponse:
    """The reverse N+1: one query per author for their books."""
    out = {}
    for author in Author.objects.order_by("id")[:50]:
        out[author.name] = [b.title for b in author.book_set.all()]  # LAZY-REVERSE
    return JsonResponse(out)


def _two_queries_per_author() -> dict[str, int]:
    out = {}
    for author in Author.objects.order_by("id")[:10]:
        # Two deliberate queries per author (say, a per-author lock and a count).
        Author.objects.filter(pk=author.pk).exists()
        out[author.name] = Book.objects.filter(author_id=author.pk).count()
    return out


def authors_deliberate(request: HttpRequest) -> JsonResponse:
    """Two queries per author in a loop, marked as deliberate."""
    with allow_n_plus_one():
        return JsonResponse(_two_queries_per_author())


@allow_n_plus_one()
def authors_deliberate_decorated(request: HttpRequest) -> JsonResponse:
    """The same loop, marked with the decorator form."""
    return JsonResponse(_two_queries_per_author())


def authors_unmarked(request: HttpRequest) -> JsonResponse:
    """The same loop without the marker (flagged)."""
    return JsonResponse(_two_queries_per_author())


def three_queries(request: HttpRequest) -> JsonResponse:
    """Exactly three queries, on the primary and on a shard."""
    Author.objects.using("default").count()
    Author.objects.using("default").exists()
    with connections["shard1"].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM pg_class")
    return JsonResponse({"ok": True})


@max_queries(2)
def three_queries_budget_two(request: HttpRequest) -> JsonResponse:
    """Three queries under a budget of two."""
    return three_queries(request)


@max_queries(3)
def three_queries_budget_three(request: HttpRequest) -> JsonResponse:
    """Three queries under a budget of three."""
    return three_queries(request)


class UploadForm(forms.Form):
    """An image upload (Pillow validates that it is an image)."""

    image = forms.ImageField()


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    """POST an image: saved to the default storage, answered with its name."""
    form = UploadForm(request.POST, request.FILES)
    if request.method != "POST" or not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    image = form.cleaned_data["image"]
    name = default_storage.save(f"uploads/{image.name}", image)
    return JsonResponse({"name": name, "url": default_storage.url(name)}, status=201)
