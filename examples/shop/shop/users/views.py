"""The users API: create (returns a token), read and delete (publishes ``user_deleted``)."""

from __future__ import annotations

from django import forms
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse

from djscale.events.outbox import publish
from djscale.sharding.lookups import GlobalLookup
from shop.api import (
    ERROR,
    ID,
    MAX_ID,
    NON_BLANK,
    ApiError,
    api,
    body,
    issue_token,
    json_body,
    openapi,
    reply,
    require_user,
    validated,
)
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
    if user_id > MAX_ID:
        raise ApiError(404, "not_found", f"no user {user_id}")
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


USER = {"type": "object", "required": ["id", "email", "name", "created", "shard"],
        "properties": {"id": {"type": "integer"}, "email": {"type": "string"},
                       "name": {"type": "string"}, "created": {"type": "string"},
                       "shard": {"type": "string"}}}
USER_REF = {"$ref": "#/components/schemas/User"}

# What NewUser accepts: Django strips surrounding whitespace before checking lengths.
schema = openapi("shop users", {
    "/api/users/": {"post": {
        "summary": "create a user",
        "requestBody": json_body({
            "type": "object", "required": ["email", "name"],
            "properties": {"email": {"type": "string", "format": "email", "maxLength": 254},
                           "name": {"type": "string", "minLength": 1, "maxLength": 100,
                                    "pattern": NON_BLANK}}}),
        "responses": {
            "201": reply("created, with its token (shown once)", {"allOf": [USER_REF, {
                "type": "object", "required": ["token"],
                "properties": {"token": {"type": "string"}}}]}),
            "400": reply("invalid fields (named)"),
            "409": reply("e-mail taken", ERROR)}}},
    "/api/users/{user_id}": {
        "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": ID}],
        "get": {"summary": "a user (own token or staff)", "security": [{"bearer": []}],
                "responses": {"200": reply("the user", USER_REF),
                              "403": reply("the token belongs to another user")}},
        "delete": {"summary": "delete a user; publishes user_deleted",
                   "security": [{"bearer": []}],
                   "responses": {"200": reply("deleted; user_deleted published", {
                       "type": "object", "required": ["deleted"],
                       "properties": {"deleted": {"type": "integer"}}}),
                                 "403": reply("the token belongs to another user")}}},
}, {"User": USER})
