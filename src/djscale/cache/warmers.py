"""Cache warmers: fill the cache before traffic arrives (``manage.py warm_cache``).

A warmer is a function registered with :func:`warmer` that yields ``(key, value)`` pairs
(or ``(key, value, timeout)``); :func:`warm` writes them with ``set_many`` in batches,
pausing between batches so warming never stampedes the database or Redis::

    @warmer("featured_products", batch_size=200)
    def featured_products():
        for p in Product.objects.filter(featured=True).iterator(chunk_size=200):
            yield f"product:{p.pk}", ProductSerializer(p).data

A warmer can also refresh ``@cached`` functions: yield ``warm_call(func, *args)`` items
and the function is called and stored under its own canonical key.

This module only registers and runs warmers; the command in
:mod:`djscale.cache.warm_command` adds the progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT

from djscale.cache.decorators import CachedFunction
from djscale.errors import ConfigurationError

__all__ = ["WarmCall", "Warmer", "registered_warmers", "warm", "warm_call", "warmer"]


@dataclass(frozen=True)
class Warmer:
    """A registered warmer."""

    name: str
    func: Callable[[], Iterable[Any]]
    cache: str = "default"
    batch_size: int = 100
    timeout: float | object | None = DEFAULT_TIMEOUT
    count: Callable[[], int] | None = None
    """Optional: how many items it will yield (for the progress bar)."""


@dataclass(frozen=True)
class WarmCall:
    """An item asking to refresh ``func(*args, **kwargs)`` of a ``@cached`` function."""

    func: CachedFunction[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def warm_call(func: CachedFunction[..., Any], *args: Any, **kwargs: Any) -> WarmCall:
    """An item for a warmer: refresh the cached call ``func(*args, **kwargs)``."""
    return WarmCall(func, args, kwargs)


_registry: dict[str, Warmer] = {}


def warmer(name: str | None = None, *, cache: str = "default", batch_size: int = 100,
           timeout: float | object | None = DEFAULT_TIMEOUT,
           count: Callable[[], int] | None = None,
           ) -> Callable[[Callable[[], Iterable[Any]]], Callable[[], Iterable[Any]]]:
    """Register the decorated generator as warmer ``name`` (default: its qualified name)."""
    if batch_size < 1:
        raise ConfigurationError(f"warmer batch_size must be >= 1, got {batch_size}")

    def register(func: Callable[[], Iterable[Any]]) -> Callable[[], Iterable[Any]]:
        wname = name or f"{func.__module__}.{func.__qualname__}"
        _registry[wname] = Warmer(wname, func, cache, batch_size, timeout, count)
        return func
    return register


def registered_warmers() -> dict[str, Warmer]:
    """Every registered warmer by name (registration order)."""
    return dict(_registry)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def warm(w: Warmer, *, batch_size: int | None = None, pause: float = 0.0,
         progress: Callable[[int], None] | None = None) -> int:
    """Run one warmer; return how many entries it stored.

    Items are written ``batch_size`` at a time with one ``set_many`` per batch and
    ``pause`` seconds between batches; ``progress(n_done)`` is called after each batch.
    """
    backend = caches[w.cache]
    done = 0
    for batch in _batches(w.func(), batch_size or w.batch_size):
        plain: dict[float | object | None, dict[str, Any]] = {}
        for item in batch:
            if isinstance(item, WarmCall):
                item.func.refresh(*item.args, **item.kwargs)
                continue
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise ConfigurationError(
                    f"warmer {w.name!r} yielded {item!r}; expected (key, value), "
                    "(key, value, timeout) or warm_call(...)")
            timeout = item[2] if len(item) == 3 else w.timeout
            plain.setdefault(timeout, {})[item[0]] = item[1]
        for timeout, data in plain.items():
            backend.set_many(data, timeout=timeout)  # type: ignore[arg-type]
        done += len(batch)
        if progress is not None:
            progress(done)
        if pause:
            time.sleep(pause)
    return done
