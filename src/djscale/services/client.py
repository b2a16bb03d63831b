"""Service clients: a thin facade over the resilient transport, one per upstream.

:class:`ServiceClient` (sync) and :class:`AsyncServiceClient` call one service by name:
they pool connections (httpx), spread calls over the service's URLs (round robin), add
the headers that carry the caller's context (request id, auth; see
:mod:`djscale.services.context`) and hand the request to a
:class:`~djscale.services.transport.ResilientTransport`, which owns timeouts, retries and
the circuit breaker. Build them from the topology's ``[services.<name>]`` table with
:meth:`ServiceClient.from_spec`, or from Django settings with :func:`service_client`::

    users = service_client("users")          # DJSCALE["SERVICES"]["users"]
    r = users.get(f"/users/{user_id}", timeout=0.5)
    r.raise_for_status()

Failures raise :class:`~djscale.errors.ServiceError` subclasses (never a bare httpx
error); a final 4xx/5xx answer is returned for the caller to inspect.

A client is shared by every request of a process, so it keeps no cookies (an upstream's
``Set-Cookie`` for one user must never be sent on another user's call) and ignores the
environment's proxy settings (a proxy would bypass the resilient transport). The async
client hands requests straight to its transport: ``httpx.AsyncClient.send`` adds auth
flows, redirects, cookie extraction and mounts that a service call does not use, at a
measurable price per call in the gateway.
"""

from __future__ import annotations

import base64
import http.cookiejar
import itertools
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Self

import httpx

from djscale.errors import ConfigurationError
from djscale.services.breaker import BreakerRegistry, CircuitBreaker, breakers
from djscale.services.context import outgoing_headers
from djscale.services.policy import IDEMPOTENCY_KEY, RetryPolicy
from djscale.services.transport import (
    RETRIES_EXTENSION,
    TIMEOUT_EXTENSION,
    AsyncResilientTransport,
    ResilientTransport,
)
from djscale.topology import ServiceSpec

__all__ = ["AsyncServiceClient", "ServiceClient", "service_client"]

_QueryParams = Mapping[str, Any] | None


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: a shared client must not carry user state."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Ignore the answer's ``Set-Cookie``."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        """Keep nothing."""


def _split_userinfo(url: str) -> tuple[httpx.URL, str, str | None]:
    """The URL without ``user:password@``, its text without a trailing '/', and the
    Basic ``Authorization`` that the credentials stood for (httpx sends them so)."""
    parsed = httpx.URL(url)
    auth = None
    if parsed.userinfo:
        token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
        parsed, auth = parsed.copy_with(username=None, password=None), f"Basic {token}"
    return parsed, str(parsed.copy_with(query=None, fragment=None)).rstrip("/"), auth


class _Base:
    """What the sync and async clients share: URLs, headers, building requests."""

    transport: ResilientTransport | AsyncResilientTransport
    _client: httpx.Client | httpx.AsyncClient

    def __init__(self, *, name: str, urls: Sequence[str], headers: Mapping[str, str] | None,
                 forward_auth: bool) -> None:
        if not urls:
            raise ConfigurationError(f"service {name!r} has no URL: give at least one")
        self.name = name
        bases = [_split_userinfo(u) for u in urls]
        self.urls = [url for url, _, _ in bases]
        self._bases = [(prefix, auth) for _, prefix, auth in bases]
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self.headers = dict(headers or {})
        self.forward_auth = forward_auth
        self._defaults: dict[str, tuple[str, str]] | None = None

    @classmethod
    def from_spec(cls, spec: ServiceSpec, *, registry: BreakerRegistry = breakers,
                  **kwargs: Any) -> Self:
        """A client configured by a topology ``[services.<name>]`` table."""
        return cls(urls=spec.urls, **{**_transport_args(spec, registry), **kwargs,
                                      "name": spec.name})

    @property
    def breaker(self) -> CircuitBreaker:
        """The service's circuit breaker."""
        return self.transport.breaker

    def build(self, method: str, path: str, *, params: _QueryParams = None,
              json: Any = None, content: bytes | str | None = None,
              headers: Mapping[str, str] | None = None, timeout: float | None = None,
              retries: int | None = None, idempotency_key: str | None = None,
              ) -> httpx.Request:
        """Build (not send) a request to ``path``; ``timeout`` is its whole budget."""
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"path {path!r} must start with a single '/': a service client "
                             "only calls its own service")
        if "#" in path:
            raise ValueError(f"path {path!r} must not contain '#' (quote it as %23)")
        with self._lock:
            index = next(self._next)
        prefix, url_auth = self._bases[index]
        # The request is built here rather than by client.build_request(): one URL parse
        # instead of three, which the gateway pays on every call.
        if self._defaults is None:
            self._defaults = {k.lower(): (k, v) for k, v in self._client.headers.items()}
        merged = dict(self._defaults)
        for source in (self.headers, outgoing_headers(forward_auth=self.forward_auth),
                       headers or {}):
            for key, value in source.items():
                merged[key.lower()] = (key, value)
        if url_auth:
            merged["authorization"] = ("Authorization", url_auth)
        if idempotency_key:
            merged[IDEMPOTENCY_KEY.lower()] = (IDEMPOTENCY_KEY, idempotency_key)
        extensions: dict[str, Any] = {}
        if timeout is not None:
            extensions[TIMEOUT_EXTENSION] = timeout
        if retries is not None:
            extensions[RETRIES_EXTENSION] = retries
        return httpx.Request(method, prefix + path, params=params, json=json, content=content,
                             headers=list(merged.values()), extensions=extensions)


def _transport_args(spec: ServiceSpec, registry: BreakerRegistry) -> dict[str, Any]:
    return {
        "timeout": spec.timeout,
        "connect_timeout": spec.connect_timeout,
        "retry": RetryPolicy(retries=spec.retries),
        "breaker": registry.get(spec.name, failure_rate=spec.breaker_failure_rate,
                                minimum_calls=spec.breaker_minimum_calls,
                                window=spec.breaker_window, reset_timeout=spec.breaker_reset),
    }


class ServiceClient(_Base):
    """Sync client of one service; thread-safe, pooled; close it (or use ``with``)."""

    transport: ResilientTransport
    _client: httpx.Client

    def __init__(self, *, name: str, urls: Sequence[str], timeout: float = 5.0,
                 connect_timeout: float = 1.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None, headers: Mapping[str, str] | None = None,
                 forward_auth: bool = True, limits: httpx.Limits | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(name=name, urls=urls, headers=headers, forward_auth=forward_auth)
        self.transport = ResilientTransport(
            service=name, timeout=timeout, connect_timeout=connect_timeout, retry=retry,
            breaker=breaker, transport=transport, limits=limits)
        self._client = httpx.Client(transport=self.transport, cookies=_NoCookies(),
                                    trust_env=False)

    def send(self, request: httpx.Request) -> httpx.Response:
        """Send a request built by :meth:`build`."""
        return self._client.send(request)

    def request(self, method: str, path: str, *, params: _QueryParams = None,
                json: Any = None, content: bytes | str | None = None,
                headers: Mapping[str, str] | None = None, timeout: float | None = None,
                retries: int | None = None, idempotency_key: str | None = None,
                ) -> httpx.Response:
        """Call ``method path`` on the service; ``timeout`` is this call's whole budget."""
        return self.send(self.build(method, path, params=params, json=json, content=content,
                                    headers=headers, timeout=timeout, retries=retries,
                                    idempotency_key=idempotency_key))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path`` (retried on failure)."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``path`` (retried only with an ``idempotency_key``)."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        """PUT ``path`` (retried on failure)."""
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        """PATCH ``path`` (retried only with an ``idempotency_key``)."""
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        """DELETE ``path`` (retried on failure)."""
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncServiceClient(_Base):
    """Async client of one service; pooled; close it with :meth:`aclose`."""

    transport: AsyncResilientTransport
    _client: httpx.AsyncClient

    def __init__(self, *, name: str, urls: Sequence[str], timeout: float = 5.0,
                 connect_timeout: float = 1.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None, headers: Mapping[str, str] | None = None,
                 forward_auth: bool = True, limits: httpx.Limits | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(name=name, urls=urls, headers=headers, forward_auth=forward_auth)
        self.transport = AsyncResilientTransport(
            service=name, timeout=timeout, connect_timeout=connect_timeout, retry=retry,
            breaker=breaker, transport=transport, limits=limits)
        # Builds requests only (default headers, URL); send() skips its machinery.
        self._client = httpx.AsyncClient(transport=self.transport, cookies=_NoCookies(),
                                         trust_env=False)

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send a request built by :meth:`build` (``stream``: body not read yet)."""
        response = await self.transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call ``method path`` on the service; ``timeout`` is this call's whole budget."""
        return await self.send(self.build(method, path, **kwargs))

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path`` (retried on failure)."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``path`` (retried only with an ``idempotency_key``)."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        """PUT ``path`` (retried on failure)."""
        return await self.request("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        """DELETE ``path`` (retried on failure)."""
        return await self.request("DELETE", path, **kwargs)

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()


_clients: dict[str, ServiceClient] = {}
_clients_lock = threading.Lock()


def _spec_from_settings(name: str) -> ServiceSpec:
    from djscale import conf

    services = conf.get().services
    found = services.get(name)
    if found is None:
        known = ", ".join(sorted(services)) or "none"
        raise ConfigurationError(
            f"no service {name!r} in DJSCALE['SERVICES'] (configured: {known}); "
            f"add [services.{name}] to the topology file")
    return found.spec()


def service_client(name: str) -> ServiceClient:
    """The process's shared sync client of service ``name``, from Django settings."""
    with _clients_lock:
        client = _clients.get(name)
        if client is None:
            client = _clients[name] = ServiceClient.from_spec(_spec_from_settings(name))
        return client
