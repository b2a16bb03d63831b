"""Canonical, hashed cache keys for function calls.

``function_key(func, args, kwargs)`` binds the arguments to the function's signature
(so ``f(1)``, ``f(x=1)`` and ``f(1, y=<default>)`` are one key), encodes them with
:func:`canonical` — a type-tagged, order-independent-where-it-should-be encoding — and
hashes the result: ``djscale:fn:<module>.<qualname>:<sha256 prefix>``. Unlike
``f"{name}:{args}"`` it never collides ``f(1, "2")`` with ``f("1", 2)``, does not depend
on dict insertion order or set iteration order, and is stable across processes and
Python runs (no ``hash()``, no ``id()``).

Arguments that cannot be encoded safely raise :class:`~djscale.errors.CacheKeyError`
instead of silently keying on ``repr`` (which often contains memory addresses).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import inspect
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from djscale.errors import CacheKeyError

__all__ = ["canonical", "function_key", "qualified_name"]


def _enc(obj: Any, out: list[str]) -> None:
    # Every branch starts with a distinct tag and length-prefixes variable parts, so no
    # two different values produce the same text.
    t = type(obj)
    if obj is None:
        out.append("N")
    elif t is bool:
        out.append("T" if obj else "F")
    elif t is int:
        out.append(f"i{obj};")
    elif t is float:
        out.append(f"f{obj!r};")
    elif t is str:
        out.append(f"s{len(obj)}:{obj}")
    elif t is bytes or t is bytearray:
        out.append(f"y{len(obj)}:{bytes(obj).hex()}")
    elif t is tuple or t is list:
        out.append(f"{'t' if t is tuple else 'l'}{len(obj)}(")
        for item in obj:
            _enc(item, out)
        out.append(")")
    elif isinstance(obj, Mapping):
        items = sorted((canonical(k), canonical(v)) for k, v in obj.items())
        out.append(f"d{len(items)}{{")
        for k, v in items:
            out.append(f"{len(k)}:{k}{len(v)}:{v}")
        out.append("}")
    elif t is set or t is frozenset:
        members = sorted(canonical(m) for m in obj)
        out.append(f"S{len(members)}{{")
        for m in members:
            out.append(f"{len(m)}:{m}")
        out.append("}")
    elif isinstance(obj, enum.Enum):
        out.append(f"e{qualified_name(t)}:")
        _enc(obj.value, out)
    elif t is decimal.Decimal:
        out.append(f"D{obj};")
    elif t is uuid.UUID:
        out.append(f"u{obj.hex};")
    elif t in (datetime.datetime, datetime.date, datetime.time):
        out.append(f"{t.__name__[:2]}{obj.isoformat()};")
    elif t is datetime.timedelta:
        out.append(f"td{obj.total_seconds()!r};")
    elif hasattr(obj, "__cache_key__"):
        out.append(f"o{qualified_name(t)}:")
        _enc(obj.__cache_key__(), out)
    elif hasattr(obj, "_meta") and hasattr(obj, "pk"):
        # A Django model instance: its identity is (app_label.model, pk).
        if obj.pk is None:
            raise CacheKeyError(f"cannot build a cache key from an unsaved {t.__name__}")
        out.append(f"m{obj._meta.label_lower}:")
        _enc(obj.pk, out)
    elif isinstance(obj, int | float | str | bytes | tuple | list):
        # Subclasses (IntEnum handled above): tag with the class so they differ from the base.
        out.append(f"x{qualified_name(t)}:")
        base = next(b for b in (bool, int, float, str, bytes, tuple, list) if isinstance(obj, b))
        _enc(base(obj), out)  # type: ignore[arg-type]
    else:
        raise CacheKeyError(
            f"cannot build a cache key from a {qualified_name(t)} argument: give the class "
            "a __cache_key__() method returning plain data, or pass key= to @cached")


def canonical(obj: Any) -> str:
    """The canonical text encoding of ``obj`` (type-tagged, deterministic)."""
    out: list[str] = []
    _enc(obj, out)
    return "".join(out)


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a function or class."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def function_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 name: str | None = None, signature: inspect.Signature | None = None) -> str:
    """The cache key of calling ``func(*args, **kwargs)``."""
    sig = signature if signature is not None else inspect.signature(func)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise CacheKeyError(f"{qualified_name(func)}: {exc}") from exc
    bound.apply_defaults()
    encoded = canonical(tuple(bound.arguments.items()))
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:40]
    return f"djscale:fn:{name or qualified_name(func)}:{digest}"
