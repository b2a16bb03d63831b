"""``@cached``: memoize a function or method in a Django cache, stampede-protected.

::

    @cached(timeout=300)
    def product_page(product_id: int, *, currency: str = "EUR") -> dict: ...

    product_page(7)                   # computed once across all processes, then cached
    product_page.invalidate(7)        # delete that entry everywhere (L1 of every process)
    product_page.refresh(7)           # recompute and store now
    product_page.uncached(7)          # call the function, bypassing the cache

    @cached(timeout=300, tags=lambda product_id: [f"shop.product:{product_id}"])
    def product_card(product_id: int) -> dict: ...   # invalidate_tags() finds it by tag
    with bypass_cache():              # bypass for everything in this block (per context)
        product_page(7)

Keys come from :func:`djscale.cache.keys.function_key` (qualified name + canonical hashed
arguments) or from ``key=`` (a callable receiving the same arguments and returning a
string). Lookups go through the cache's ``get_or_set`` so a :class:`TieredCache` gives
single-flight, a cross-process lock and XFetch; other backends still work (without
those guarantees).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from djscale.cache.keys import function_key, qualified_name
from djscale.cache.tags import index_entry, invalidated_at

__all__ = ["CachedFunction", "bypass_cache", "cached"]

P = ParamSpec("P")
R = TypeVar("R")

_bypass: contextvars.ContextVar[bool] = contextvars.ContextVar("djscale_cache_bypass",
                                                               default=False)


@contextlib.contextmanager
def bypass_cache() -> Iterator[None]:
    """Within this block, ``@cached`` functions compute and do not touch the cache."""
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


class CachedFunction(Generic[P, R]):
    """A function wrapped by :func:`cached`; call it like the function."""

    def __init__(self, func: Callable[P, R], *, timeout: float | object | None,
                 key: Callable[..., str] | None, version: int | None, cache: str,
                 name: str | None, tags: Callable[..., Iterable[str]] | None = None) -> None:
        self.__wrapped__ = func
        self.tags = tags
        functools.update_wrapper(self, func)
        self.timeout = timeout
        self.key_func = key
        self.version = version
        self.cache_alias = cache
        self.name = name or qualified_name(func)
        self._signature = inspect.signature(func)

    @property
    def cache(self) -> BaseCache:
        """The Django cache used (per thread, as Django hands them out)."""
        return caches[self.cache_alias]

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of this call."""
        if self.key_func is not None:
            return f"djscale:fn:{self.name}:{self.key_func(*args, **kwargs)}"
        return function_key(self.__wrapped__, args, kwargs, name=self.name,
                            signature=self._signature)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if _bypass.get():
            return self.__wrapped__(*args, **kwargs)
        key = self.key(*args, **kwargs)
        tags = list(self.tags(*args, **kwargs)) if self.tags is not None else []
        stamps = invalidated_at(self.cache, tags) if tags else []
        computed = False

        def compute() -> R:
            nonlocal computed
            computed = True
            if self.tags is not None:
                # Indexed before the value is stored: an invalidation can only find more.
                timeout = self.timeout if isinstance(self.timeout, int | float) else None
                index_entry(self.cache, tags, key, self.version, timeout)
            return self.__wrapped__(*args, **kwargs)

        # Django's get_or_set() tells a cached None from a miss, so None is cached too.
        value: R = self.cache.get_or_set(key, compute, timeout=self.timeout,  # type: ignore[arg-type, assignment]
                                         version=self.version)
        if computed and tags:
            if invalidated_at(self.cache, tags) != stamps:
                # An invalidation of these tags ran while we computed: what we stored may
                # be older than it (see djscale.cache.tags). Other processes may have
                # copied it into their L1 meanwhile: gone from there too before we answer.
                self.cache.delete(key, version=self.version)
                wait = getattr(self.cache, "wait_for_l1", None)
                if wait is not None:
                    wait()
            else:
                # Indexed again now that it is stored: an invalidation that stamped the
                # tags before we read the stamps but emptied their index after we indexed
                # (our data is newer than it) took our entry out of the index, and no
                # later invalidation would have found it until it expired (measured: a
                # category page stale ~30 s at the edge, 1 update in ~150 under wrk).
                timeout = self.timeout if isinstance(self.timeout, int | float) else None
                index_entry(self.cache, tags, key, self.version, timeout)
        return value

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundCached(self, instance)

    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function without reading or writing the cache."""
        return self.__wrapped__(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the cached result of this call everywhere; True if there was one."""
        return bool(self.cache.delete(self.key(*args, **kwargs), version=self.version))

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Compute now and store the result (e.g. from a warmer or after a write)."""
        value = self.__wrapped__(*args, **kwargs)
        if self.tags is not None:
            timeout = self.timeout if isinstance(self.timeout, int | float) else None
            index_entry(self.cache, self.tags(*args, **kwargs), self.key(*args, **kwargs),
                        self.version, timeout)
        self.cache.set(self.key(*args, **kwargs), value,
                       timeout=self.timeout, version=self.version)  # type: ignore[arg-type]
        return value


class _BoundCached:
    """``instance.method`` of a cached method: ``self`` becomes the first argument."""

    def __init__(self, cf: CachedFunction[..., Any], instance: Any) -> None:
        self._cf = cf
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cf(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self._cf.invalidate(self._instance, *args, **kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return self._cf.refresh(self._instance, *args, **kwargs)

    def uncached(self, *args: Any, **kwargs: Any) -> Any:
        return self._cf.uncached(self._instance, *args, **kwargs)

    def key(self, *args: Any, **kwargs: Any) -> str:
        return self._cf.key(self._instance, *args, **kwargs)


@overload
def cached(func: Callable[P, R], /) -> CachedFunction[P, R]: ...


@overload
def cached(*, timeout: float | object | None = ..., key: Callable[..., str] | None = ...,
           version: int | None = ..., cache: str = ..., name: str | None = ...,
           tags: Callable[..., Iterable[str]] | None = ...
           ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cached(func: Callable[P, R] | None = None, /, *,
           timeout: float | object | None = DEFAULT_TIMEOUT,
           key: Callable[..., str] | None = None, version: int | None = None,
           cache: str = "default", name: str | None = None,
           tags: Callable[..., Iterable[str]] | None = None) -> Any:
    """Memoize a function (or method) in the ``cache`` alias for ``timeout`` seconds.

    ``key`` replaces the canonical argument hash (it gets the call's arguments);
    ``name`` replaces the qualified name in keys (keep keys stable across a rename).
    A result of None is cached too. ``tags`` (given the call's arguments) names the tags
    of the entry, for :func:`djscale.cache.tags.invalidate_tags` and the edge's
    invalidation (:mod:`djscale.edge.invalidation`).
    """
    def decorate(f: Callable[P, R]) -> CachedFunction[P, R]:
        return CachedFunction(f, timeout=timeout, key=key, version=version, cache=cache,
                              name=name, tags=tags)
    return decorate(func) if func is not None else decorate
