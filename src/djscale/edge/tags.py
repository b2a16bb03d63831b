"""Surrogate keys: the tags of what a response shows, for purging it by tag later.

A response carries its tags in one ``Surrogate-Key`` header (space-separated, the header
Fastly reads; the Varnish VCL of :mod:`djscale.cluster.varnish` hands it to xkey; a
Cloudflare edge is told ``Cache-Tag`` too). The edge keeps the tags with the cached
object and strips the header before the client sees it.

A model instance's tags are ``<app_label>.<model>`` (any object of the model: lists) and
``<app_label>.<model>:<pk>`` (this one), the tags :mod:`djscale.edge.invalidation` purges
when the instance is saved or deleted::

    @public_cache(max_age=30)
    @edge_tags(lambda request, product_id: [(Product, product_id)])
    def product(request, product_id): ...

    def category(request, slug):
        response = JsonResponse(...)
        return add_tags(response, Product, *products)   # the list shows every product

Items are tag strings, model instances, ``(model, pk)`` pairs, or model classes (the
class tag only).

A response built by a request that began before (or just after: clocks of different
hosts differ a little) the last invalidation of one of its tags may hold data read before
the write; it gets ``Cache-Control: no-store`` so the edge cannot keep it past the purge
that is on its way (the stamps of :func:`djscale.cache.tags.invalidated_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

from django.core.cache import caches
from django.db.models import Model
from django.http import HttpResponseBase

from djscale import conf
from djscale.cache.tags import invalidated_at, tag_token
from djscale.http.cache_control import request_started

__all__ = ["TAG_HEADER", "TagItem", "add_tags", "edge_tags", "model_tags", "tag_token",
           "tags_of"]

TAG_HEADER = "Surrogate-Key"
"""The response header carrying the tags (stripped by the edge)."""

CLOUDFLARE_HEADER = "Cache-Tag"

_MAX_HEADER = 16_000  # Fastly's limit is 16 KB; Varnish's default http_resp_hdr_len is 8 KB
RACE_MARGIN = 0.05
"""Seconds of clock difference between hosts that a stamp comparison tolerates."""

TagItem = Any
"""A tag string, a model instance, a ``(model, pk)`` pair or a model class."""

F = TypeVar("F", bound=Callable[..., Any])
_Response = TypeVar("_Response", bound=HttpResponseBase)


def model_tags(obj: Model | type[Model], pk: Any = None) -> list[str]:
    """The tags of a model instance (class tag and instance tag), or of a model class."""
    if isinstance(obj, type):
        label = obj._meta.label_lower
        return [label] if pk is None else [label, tag_token(f"{label}:{pk}")]
    label = obj._meta.label_lower
    return [label, tag_token(f"{label}:{obj.pk}")] if obj.pk is not None else [label]


def tags_of(items: Iterable[TagItem]) -> list[str]:
    """The tags of ``items`` (see module), each once, in order.

    Tag strings and primary keys pass through :func:`tag_token`; ValueError on an empty
    tag or an item that is not a tag string, a model (instance or class) or a pair.
    """
    found: dict[str, None] = {}
    for item in items:
        if isinstance(item, str):
            found[tag_token(item)] = None
        elif isinstance(item, Model) or (isinstance(item, type) and issubclass(item, Model)):
            found.update(dict.fromkeys(model_tags(item)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], type) \
                and issubclass(item[0], Model):
            found.update(dict.fromkeys(model_tags(item[0], item[1])))
        else:
            raise ValueError(f"cannot tag a response with {item!r}: give a tag string, a "
                             "model instance, a model class or a (model, pk) pair")
    return list(found)


def add_tags(response: _Response, *items: TagItem) -> _Response:
    """Add the tags of ``items`` to ``response``'s ``Surrogate-Key``; return ``response``.

    When the header would grow past what edges accept, the instance tags are dropped for
    their class tags (a purge of any object of the class still reaches the page).
    """
    tags = tags_of([*response.get(TAG_HEADER, "").split(), *items])
    value = " ".join(tags)
    if len(value) > _MAX_HEADER:
        value = " ".join(dict.fromkeys(t.split(":", 1)[0] for t in tags))[:_MAX_HEADER]
        value = value.rsplit(" ", 1)[0] if len(value) == _MAX_HEADER else value
    if value:
        response[TAG_HEADER] = value
        response[CLOUDFLARE_HEADER] = ",".join(value.split())
        started = request_started()
        if started is not None and _raced(tags, started):
            response["Cache-Control"] = "no-store"
    return response


def _raced(tags: list[str], started: float) -> bool:
    """True when one of ``tags`` was invalidated after (about) ``started``."""
    aliases = conf.get().edge.caches
    if not aliases:
        return False
    return any(at >= started - RACE_MARGIN
               for at in invalidated_at(caches[aliases[0]], tags))


def edge_tags(*items: TagItem | Callable[..., Iterable[TagItem]]) -> Callable[[F], F]:
    """Tag the decorated view's responses.

    Each item is a tag item (module docstring) or a callable receiving the view's
    arguments (``request, *args, **kwargs``) and returning tag items.
    """
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            response = view(request, *args, **kwargs)
            found: list[TagItem] = []
            for item in items:
                if callable(item) and not isinstance(item, type):
                    found.extend(item(request, *args, **kwargs))
                else:
                    found.append(item)
            return add_tags(response, *found)
        return wrapper  # type: ignore[return-value]
    return decorate
