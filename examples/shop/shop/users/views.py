"""The users API: create (returns a token), read and delete (publishes ``user_deleted``)."""

from __future__ import annotations

from django import forms
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse

from djscale.events.outbox import publish
from djscale.sharding.lookups import GlobalLookup
from shop.api import ApiError, api, body, issue_token, openapi, require_user, validated
from shop.users.models import User, UserDirectory

directory = GlobalLookup(UserDirectory, User, source="pk", target="user_id")


class NewUser(forms.Form):
    email = forms.EmailField(max_length=254)
    name = forms.CharField(max_length=100, min_length=1)


@api("POST")
def users(request: HttpRequest) -> JsonResponse:
    """Create a user; the answer carries the user's token (shown once)."""
    data = validated(NewUser, body(request))
    try:
        user = directory.create({"email": data["email"]}, email=data["email"],
                                name=data["name"])
    except IntegrityError:
        raise ApiError(409, "conflict", "a user with this e-mail exists") from None
    return JsonResponse({**user.as_json(), "token": issue_token(user.user_id)}, status=201)


def _get(user_id: int) -> User:
    try:
        return User.objects.get_by_shard_key(user_id)
    except User.DoesNotExist:
        raise ApiError(404, "not_found", f"no user {user_id}") from None


@api("GET", "DELETE")
def user(request: HttpRequest, user_id: int) -> JsonResponse:
    """GET: the user (own token or staff). DELETE: remove and announce ``user_deleted``."""
    require_user(request, user_id)
    found = _get(user_id)
    if request.method == "GET":
        return JsonResponse(found.as_json())
    shard = found.shard_alias()
    # The deletion and its event commit together on the user's shard: the event can be
    # neither lost (broker down) nor sent for a deletion that rolled back.
    with transaction.atomic(using="default"):
        UserDirectory.objects.using("default").filter(pk=user_id).delete()
        with transaction.atomic(using=shard):
            found.delete()
            publish("user_deleted", {"user_id": user_id}, using=shard, key=str(user_id))
    return JsonResponse({"deleted": user_id})


schema = openapi("shop users", {
    "/api/users/": {"post": {"summary": "create a user", "requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "required": ["email", "name"],
                                        "properties": {"email": {"type": "string"},
                                                       "name": {"type": "string"}}}}}},
        "responses": {"201": {"description": "created, with its token"},
                      "400": {"description": "invalid fields"},
                      "409": {"description": "e-mail taken"}}}},
    "/api/users/{user_id}": {
        "get": {"security": [{"bearer": []}], "responses": {"200": {"description": "user"},
                                                            "401": {"description": "no token"},
                                                            "404": {"description": "none"}}},
        "delete": {"security": [{"bearer": []}],
                   "responses": {"200": {"description": "deleted; user_deleted published"}}}},
})
