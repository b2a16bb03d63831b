"""Client address and scheme from ``X-Forwarded-*`` headers, trusted only from proxies.

Behind nginx or HAProxy, ``REMOTE_ADDR`` is the load balancer and the client's address,
scheme and host arrive in ``X-Forwarded-For``, ``X-Forwarded-Proto`` and
``X-Forwarded-Host``. Anyone can send those headers, so :class:`TrustedProxyMiddleware`
believes them only when the request comes from an address in
``DJSCALE["TRUSTED_PROXIES"]`` (IP addresses or CIDR networks; from the
topology's load balancer by default). Then:

- ``REMOTE_ADDR`` becomes the client: the right-most address of ``X-Forwarded-For`` that
  is not itself a trusted proxy (the left part of the header is whatever the client
  wrote and is never used);
- the scheme becomes ``X-Forwarded-Proto`` (``http`` or ``https``) so ``request.is_secure()``
  and absolute URLs are right without ``SECURE_PROXY_SSL_HEADER``;
- the host becomes ``X-Forwarded-Host`` (still checked against ``ALLOWED_HOSTS``).

From any other address the three headers are **removed**, so neither Django
(``SECURE_PROXY_SSL_HEADER``, ``USE_X_FORWARDED_HOST``) nor the project can be fooled.
Put this middleware first. The address the request really came from stays in
``request.META["DJSCALE_PEER_ADDR"]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache

from django.http import HttpRequest, HttpResponseBase

from djscale import conf
from djscale.errors import ConfigurationError

__all__ = ["TrustedProxyMiddleware", "client_address", "is_trusted", "trusted_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_REAL_IP", "HTTP_FORWARDED")


@lru_cache(maxsize=8)
def _parse(entries: tuple[str, ...]) -> tuple[Network, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigurationError(
                f"DJSCALE['TRUSTED_PROXIES'] has {entry!r}, which is not an IP address or "
                "network (e.g. '10.0.0.5' or '10.0.0.0/24')"
            ) from None
    return tuple(networks)


def trusted_networks(entries: Iterable[str] | None = None) -> tuple[Network, ...]:
    """Parse trusted proxy addresses (default: ``DJSCALE["TRUSTED_PROXIES"]``).

    Host names are not accepted (they would need DNS on every request); raise
    :class:`~djscale.errors.ConfigurationError` on anything that is not an address.
    """
    if entries is None:
        entries = conf.get().http.trusted_proxies
    return _parse(tuple(entries))


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@lru_cache(maxsize=1024)  # a handful of load balancers send nearly every request
def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """True when ``address`` lies in one of ``networks``."""
    ip = _address(address)
    return ip is not None and any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: str, networks: tuple[Network, ...]) -> str:
    """The client address for a request from ``peer`` carrying ``X-Forwarded-For``.

    Walk the header from the right, skipping trusted proxies; the first other address
    is the client. Malformed entries stop the walk (they were written by the client).
    """
    if not is_trusted(peer, networks):
        return peer
    client = peer
    for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
        ip = _address(hop)
        if ip is None:
            break
        client = str(ip)
        if not any(ip in net for net in networks):
            break
    return client


class TrustedProxyMiddleware:
    """Take client IP, scheme and host from forwarded headers of trusted proxies only."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        trusted_networks()  # fail at start-up, not on the first request

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Rewrite or strip the forwarded headers, then handle the request."""
        meta = request.META
        peer = str(meta.get("REMOTE_ADDR", ""))
        meta["DJSCALE_PEER_ADDR"] = peer
        networks = trusted_networks()
        if is_trusted(peer, networks):
            meta["REMOTE_ADDR"] = client_address(peer, meta.get("HTTP_X_FORWARDED_FOR", ""),
                                                 networks)
            proto = str(meta.get("HTTP_X_FORWARDED_PROTO", "")).split(",")[0].strip().lower()
            if proto in ("http", "https"):
                meta["wsgi.url_scheme"] = proto
                if hasattr(request, "environ"):
                    request.environ["wsgi.url_scheme"] = proto
            host = str(meta.get("HTTP_X_FORWARDED_HOST", "")).split(",")[0].strip()
            if host:
                meta["HTTP_HOST"] = host
        else:
            for key in _FORWARDED:
                meta.pop(key, None)
        return self.get_response(request)
