"""Name the model field behind a repeated query, and the fix.

Two sources, most precise first:

1. :func:`relation_from_frame`: the query was run by one of Django's related-object
   descriptors or managers (``book.author``, ``author.book_set.all()``,
   ``book.tags.all()``); the descriptor on the stack names the field exactly.
2. :func:`relation_from_sql`: otherwise the SELECT's table and first WHERE column are
   mapped back through the app registry (``"app_book"."author_id" = ?`` -> the reverse
   relation ``Author.book_set``; ``"app_author"."id" = ?`` -> lookups of ``Author`` by
   primary key, fixed with ``in_bulk`` or ``select_related`` on a foreign key to it).

This module only names things; it does not decide what is an N+1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import FrameType

from django.apps import apps
from django.db import models
from django.db.models.fields.related_descriptors import (
    ForwardManyToOneDescriptor,
    ReverseOneToOneDescriptor,
)

from djscale.queries.shape import Filter

__all__ = ["Relation", "relation_from_frame", "relation_from_sql"]


@dataclass(frozen=True)
class Relation:
    """``model.field`` loaded lazily, and how to load it up front instead."""

    model: str
    field: str
    hint: str
    lazy: bool = True
    """True when a relation descriptor ran the query (``book.author``), False when the
    relation was inferred from an explicit query's SQL."""

    def __str__(self) -> str:
        return f"{self.model}.{self.field}"


def _forward(field: models.Field[object, object]) -> Relation:
    model = field.model.__name__
    return Relation(model, field.name, f"{model}.objects.select_related({field.name!r})")


def _reverse(model: type[models.Model], accessor: str, *, single: bool) -> Relation:
    name = model.__name__
    how = "select_related" if single else "prefetch_related"
    return Relation(name, accessor, f"{name}.objects.{how}({accessor!r})")


def relation_from_frame(frame: FrameType) -> Relation | None:
    """The relation a frame of ``related_descriptors.py`` is loading, if it is one."""
    obj = frame.f_locals.get("self")
    if obj is None:
        return None
    if isinstance(obj, ForwardManyToOneDescriptor):
        return _forward(obj.field)
    if isinstance(obj, ReverseOneToOneDescriptor):
        return _reverse(obj.related.model, obj.related.get_accessor_name() or "", single=True)
    instance = getattr(obj, "instance", None)
    if not isinstance(instance, models.Model):
        return None
    field = getattr(obj, "field", None)
    if isinstance(field, models.ForeignKey):  # reverse foreign key manager: author.book_set
        accessor = field.remote_field.get_accessor_name() or ""
        return _reverse(type(instance), accessor, single=False)
    cache_name = getattr(obj, "prefetch_cache_name", None)
    if isinstance(cache_name, str):  # many-to-many manager: book.tags / tag.book_set
        if getattr(obj, "reverse", False):
            # tag.book_set: the manager knows Book's field name; prefetch needs the accessor
            source = getattr(obj, "model", None)
            name = getattr(obj, "query_field_name", "")
            for m2m in getattr(getattr(source, "_meta", None), "many_to_many", ()):
                if m2m.name == name:
                    cache_name = m2m.remote_field.get_accessor_name() or cache_name
                    break
        return _reverse(type(instance), cache_name, single=False)
    return None


def _model_for_table(table: str) -> type[models.Model] | None:
    for model in apps.get_models(include_auto_created=True):
        if model._meta.db_table == table:
            return model
    return None


def relation_from_sql(flt: Filter) -> Relation | None:
    """Map a SELECT's table and first filtered column back to a model field."""
    relation = _relation_from_sql(flt)
    return dataclasses.replace(relation, lazy=False) if relation else None


def _relation_from_sql(flt: Filter) -> Relation | None:
    model = _model_for_table(flt.where_table)
    if model is None:
        return None
    column_field = next((f for f in model._meta.concrete_fields
                         if f.column == flt.where_column), None)
    if column_field is None:
        return None
    if model._meta.auto_created:  # a many-to-many "through" table
        for f in apps.get_models():
            for m2m in f._meta.many_to_many:
                if m2m.remote_field.through is model:
                    if getattr(column_field, "related_model", None) is f:
                        return _reverse(f, m2m.name, single=False)
                    accessor = m2m.remote_field.get_accessor_name() or m2m.name
                    target = m2m.related_model
                    if isinstance(target, type):
                        return _reverse(target, accessor, single=False)
        return None
    if column_field.primary_key:
        # Not run by a relation descriptor (those are named from the stack): an explicit
        # lookup by primary key, one row per iteration.
        name = model.__name__
        pointing = [
            f"{f.model.__name__}.objects.select_related({f.name!r})"
            for m in apps.get_models() for f in m._meta.concrete_fields
            if f.is_relation and (f.many_to_one or f.one_to_one) and f.related_model is model
        ]
        hint = f"{name}.objects.in_bulk(ids) once before the loop"
        if pointing:
            hint += f", or follow the foreign key with {' / '.join(pointing)}"
        return Relation(name, column_field.name, hint)
    if isinstance(column_field, models.ForeignKey):
        target = column_field.related_model
        accessor = column_field.remote_field.get_accessor_name() or ""
        if isinstance(target, type):
            return _reverse(target, accessor, single=False)
    name = model.__name__
    return Relation(name, column_field.name,
                    f"one {name}.objects.filter({column_field.name}__in=...) for all rows")
