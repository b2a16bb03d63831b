"""Reads and writes of items, the traffic a migration must not lock out."""

from __future__ import annotations

from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse

from tests.onlineapp.models import Item


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    """GET one item by id (from the shard its id encodes)."""
    try:
        return JsonResponse(Item.objects.get_by_id(item_id).as_json())
    except Item.DoesNotExist:
        return JsonResponse({"error": "not_found"}, status=404)


def create(request: HttpRequest, user_id: int) -> HttpResponse:
    """POST: a new item of ``user_id`` on that user's shard."""
    if request.method != "POST":
        return JsonResponse({"error": "method"}, status=405)
    created = Item.objects.create(user_id=user_id, amount=user_id % 1000, note="new")
    return JsonResponse(created.as_json(), status=201)


def bump(request: HttpRequest, item_id: int) -> HttpResponse:
    """POST: add one to an item's amount (a row update on its shard)."""
    if request.method != "POST":
        return JsonResponse({"error": "method"}, status=405)
    qs = Item.objects.filter(pk=item_id)
    changed = qs.update(amount=F("amount") + 1)
    return JsonResponse({"updated": changed}, status=200 if changed else 404)
