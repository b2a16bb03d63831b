"""Views that say which app server answered and which database server they used.

Every answer names the app server (``DJSCALE_SERVICE``) and, where a database is read or
written, that server's own address (``inet_server_addr()``): the test checks that the
traffic crossed the hosts it expects.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.cache import cache
from django.db import connections, router, transaction
from django.db.models import Model
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from djscale.events.outbox import publish
from djscale.sharding import shard_for, shardmap
from tests.eventsapp.models import Account
from tests.shardapp.models import ShardedUser
from tests.testapp.models import Note


def _server() -> str:
    return os.environ.get("DJSCALE_SERVICE", "?")


def _db_address(alias: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT host(inet_server_addr()) || ':' || inet_server_port()")
        row = cursor.fetchone()
    return str(row[0]) if row else "?"


def _answer(status: int = 200, **data: Any) -> JsonResponse:
    return JsonResponse({"server": _server(), "pid": os.getpid(), **data}, status=status)


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@csrf_exempt
def create_note(request: HttpRequest) -> JsonResponse:
    """POST: write a Note on the primary (the middleware pins this client's next reads)."""
    if request.method != "POST":
        return _answer(405, error="POST only")
    alias = router.db_for_write(Note) or "default"
    address = _db_address(alias)
    note = Note.objects.create(author=_server(), text=str(_body(request).get("text", "")))
    return _answer(201, id=note.pk, db=alias, db_address=address)


def read_note(request: HttpRequest, pk: int) -> JsonResponse:
    """GET: read a Note where the router sends this client's reads."""
    alias = _read_alias(Note)
    found = Note.objects.using(alias).filter(pk=pk).exists()
    return _answer(found=found, db=alias, db_address=_db_address(alias))


def _read_alias(model: type[Model]) -> str:
    return router.db_for_read(model) or "default"


@csrf_exempt
def create_user(request: HttpRequest) -> JsonResponse:
    """POST {"user_id": N}: create a sharded user; say which shard database took it."""
    if request.method != "POST":
        return _answer(405, error="POST only")
    user_id = int(_body(request).get("user_id", 0))
    user = ShardedUser.objects.create(user_id=user_id, email=f"u{user_id}@example.com")
    alias = user._state.db or "?"
    return _answer(201, id=user.pk, db=alias, db_address=_db_address(alias),
                   expected=shardmap.current().alias_for(shard_for(user_id)))


@csrf_exempt
def cache_value(request: HttpRequest, key: str) -> JsonResponse:
    """GET: the cached value (L1, then Redis); POST {"value": V}: set it everywhere."""
    if request.method == "POST":
        cache.set(f"mh:{key}", _body(request).get("value"), timeout=None)
        return _answer(201)
    return _answer(value=cache.get(f"mh:{key}"))


@csrf_exempt
def create_account(request: HttpRequest) -> JsonResponse:
    """POST: create an Account on the primary."""
    if request.method != "POST":
        return _answer(405, error="POST only")
    account = Account.objects.create(name=_server())
    return _answer(201, id=account.pk)


def account(request: HttpRequest, pk: int) -> JsonResponse:
    """GET: the Account as the primary has it."""
    row = Account.objects.using("default").filter(pk=pk).values(
        "closed", "closed_count").first()
    return _answer(account=row)


@csrf_exempt
def close_account(request: HttpRequest, pk: int) -> JsonResponse:
    """POST: announce the closing through the outbox, in the same transaction as a write."""
    if request.method != "POST":
        return _answer(405, error="POST only")
    with transaction.atomic(using="default"):
        Account.objects.filter(pk=pk).update(name=f"closing via {_server()}")
        event = publish("account_closed", {"account_id": pk}, using="default")
    return _answer(202, event=str(event))
