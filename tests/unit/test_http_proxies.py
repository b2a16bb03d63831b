"""Forwarded headers are believed only from trusted proxies."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory, override_settings

from djscale.errors import ConfigurationError
from djscale.http.proxies import TrustedProxyMiddleware, client_address, trusted_networks


def _seen(remote: str, trusted: list[str], **headers: str) -> dict[str, object]:
    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ip": request.META["REMOTE_ADDR"], "secure": request.is_secure(),
                             "host": request.get_host(),
                             "proto": request.META.get("HTTP_X_FORWARDED_PROTO")})


    with override_settings(DJSCALE={"TRUSTED_PROXIES": trusted},
                           SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        request = RequestFactory().get("/", REMOTE_ADDR=remote, headers=headers)
        response = TrustedProxyMiddleware(view)(request)
    import json

    return json.loads(response.content)  # type: ignore[attr-defined,no-any-return]


def test_trusted_proxy_gives_client_ip_scheme_and_host() -> None:
    seen = _seen("10.0.0.2", ["10.0.0.0/24"], **{"X-Forwarded-For": "203.0.113.9",
                 "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example.com"})
    assert seen == {"ip": "203.0.113.9", "secure": True, "host": "shop.example.com",
                    "proto": "https"}


def test_untrusted_peer_cannot_spoof_ip_or_https() -> None:
    seen = _seen("198.51.100.7", ["10.0.0.0/24"], **{"X-Forwarded-For": "1.2.3.4",
                 "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"})
    assert seen["ip"] == "198.51.100.7"
    assert seen["secure"] is False  # even with SECURE_PROXY_SSL_HEADER set
    assert seen["proto"] is None
    assert seen["host"] != "evil.example"


def test_client_written_left_part_of_forwarded_for_is_ignored() -> None:
    nets = trusted_networks(["10.0.0.0/8"])
    # the client claimed 1.1.1.1; the proxy appended the real address
    assert client_address("10.0.0.2", "1.1.1.1, 203.0.113.9", nets) == "203.0.113.9"
    # two trusted hops are skipped
    assert client_address("10.0.0.2", "203.0.113.9, 10.0.0.3", nets) == "203.0.113.9"
    # garbage stops the walk at the last good address
    assert client_address("10.0.0.2", "nonsense, 10.0.0.3", nets) == "10.0.0.3"


def test_ipv6_and_ports_are_understood() -> None:
    nets = trusted_networks(["::1", "127.0.0.1"])
    assert client_address("::1", "[2001:db8::1]:5555", nets) == "2001:db8::1"
    assert client_address("127.0.0.1", "192.0.2.1:1234", nets) == "192.0.2.1"


def test_bad_trusted_proxy_entry_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="not an IP address"):
        trusted_networks(["lb.example.com"])
