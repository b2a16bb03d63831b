"""Purge backends: one small interface over Varnish (xkey), Fastly, Cloudflare, CloudFront.

A purger is any object with ``name`` and ``purge(tags, paths)`` that raises
:class:`~djscale.errors.PurgeError` when the edge refused or could not be reached (the
caller, :mod:`djscale.edge.invalidation`, retries and counts). Each speaks its edge's HTTP
API as documented, with ``httpx``:

=========== ==================================================================================
Varnish     ``PURGE /`` to every Varnish with ``xkey-purge: t1 t2`` (``xkey-softpurge`` for
            soft); a path: ``PURGE <path>``. Needs the VCL of :mod:`djscale.cluster.varnish`.
Fastly      ``POST /service/{id}/purge`` with ``Fastly-Key`` and
            ``{"surrogate_keys": [...]}`` (256 per request), ``Fastly-Soft-Purge: 1`` for
            soft; a path: ``POST /purge/{host}{path}``.
Cloudflare  ``POST /client/v4/zones/{zone}/purge_cache`` with ``Authorization: Bearer`` and
            ``{"tags": [...]}`` or ``{"files": [...]}`` (30 per request); ``"success": true``.
CloudFront  ``POST /2020-05-31/distribution/{id}/invalidation`` with an
            ``InvalidationBatch`` XML of paths, signed with AWS Signature V4. CloudFront
            has no tags: a model's paths (``register(..., paths=...)``) are invalidated.
=========== ==================================================================================

``purger()`` builds the one the settings (``DJSCALE["EDGE"]``, from the topology's
``[edge]``) choose. Hand-written rather than the vendors' SDKs: each is one request shape,
and boto3 alone would be a 100 MB dependency for one signed POST.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import uuid
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

import httpx

from djscale import conf
from djscale.errors import ConfigurationError, PurgeError
from djscale.localstate import LocalState, default_state_dir

__all__ = ["CloudFrontPurger", "CloudflarePurger", "FastlyPurger", "Purger",
           "VarnishPurger", "purger"]


class Purger(Protocol):
    """What :mod:`djscale.edge.invalidation` needs of an edge."""

    name: str

    def purge(self, tags: Sequence[str], paths: Sequence[str]) -> None:
        """Invalidate every object carrying one of ``tags`` and the objects of ``paths``."""


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _check(response: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> None:
    if response.status_code not in ok:
        raise PurgeError(f"{what} answered {response.status_code}: {response.text[:200]}")


class _HttpPurger:
    name = "http"

    def __init__(self, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None
                 ) -> None:
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def _send(self, method: str, url: str, what: str, **kwargs: object) -> httpx.Response:
        try:
            return self._client.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise PurgeError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


class VarnishPurger(_HttpPurger):
    """Tag purges through the xkey vmod; path purges by ``PURGE``. Every Varnish is told."""

    name = "varnish"

    def __init__(self, bases: Sequence[str] = (), *, soft: bool = False,
                 timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self._bases = [b.rstrip("/") for b in bases]
        self.soft = soft

    def bases(self) -> list[str]:
        """The Varnish base URLs: the configured ones, else ``DJSCALE_ADDR_EDGE``
        (``host:port``, set by the Kubernetes manifests), else the local cluster's edge."""
        if self._bases:
            return self._bases
        override = os.environ.get("DJSCALE_ADDR_EDGE")
        if override:
            return [f"http://{override}"]
        address = LocalState.read(default_state_dir()).address("edge")
        if address is None:
            raise PurgeError("no edge.purge_urls and no local cluster edge in "
                             f"{default_state_dir()}: is the cluster up with [edge]?")
        host, port = address
        return [f"http://{'[' + host + ']' if ':' in host else host}:{port}"]

    def purge(self, tags: Sequence[str], paths: Sequence[str]) -> None:
        """One ``PURGE`` per Varnish for the tags (chunked to stay in a header), one per path."""
        header = "xkey-softpurge" if self.soft else "xkey-purge"
        for base in self.bases():
            for chunk in _chunks(tags, 100):
                what = f"Varnish {base} tag purge"
                _check(self._send("PURGE", f"{base}/", what,
                                  headers={header: " ".join(chunk)}), what)
            for path in paths:
                what = f"Varnish {base} purge of {path}"
                _check(self._send("PURGE", f"{base}{path}", what), what, (200, 404))


class FastlyPurger(_HttpPurger):
    """Fastly: surrogate-key batch purge, URL purge."""

    name = "fastly"

    def __init__(self, service_id: str, token: str, *, soft: bool = False,
                 api_url: str = "https://api.fastly.com", host: str = "",
                 timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.service_id, self._token, self.soft = service_id, token, soft
        self.api_url, self.host = api_url.rstrip("/"), host

    def purge(self, tags: Sequence[str], paths: Sequence[str]) -> None:
        """``POST /service/{id}/purge`` (256 keys a request); ``POST /purge/{url}`` a path."""
        headers = {"Fastly-Key": self._token, "Accept": "application/json"}
        if self.soft:
            headers["Fastly-Soft-Purge"] = "1"
        for chunk in _chunks(tags, 256):
            what = "Fastly surrogate-key purge"
            _check(self._send("POST", f"{self.api_url}/service/{quote(self.service_id)}/purge",
                              what, headers=headers, json={"surrogate_keys": chunk}), what)
        for path in paths:
            what = f"Fastly purge of {path}"
            _check(self._send("POST", f"{self.api_url}/purge/{self.host}{path}", what,
                              headers=headers), what)


class CloudflarePurger(_HttpPurger):
    """Cloudflare: purge by cache tag (``Cache-Tag`` header) or by URL."""

    name = "cloudflare"

    def __init__(self, zone_id: str, token: str, *,
                 api_url: str = "https://api.cloudflare.com/client/v4", site: str = "",
                 timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.zone_id, self._token = zone_id, token
        self.api_url, self.site = api_url.rstrip("/"), site.rstrip("/")

    def purge(self, tags: Sequence[str], paths: Sequence[str]) -> None:
        """``POST /zones/{zone}/purge_cache``, 30 tags or files a request."""
        url = f"{self.api_url}/zones/{quote(self.zone_id)}/purge_cache"
        headers = {"Authorization": f"Bearer {self._token}"}
        bodies = [{"tags": c} for c in _chunks(tags, 30)] + \
            [{"files": [f"{self.site}{p}" for p in c]} for c in _chunks(paths, 30)]
        for body in bodies:
            what = "Cloudflare purge_cache"
            response = self._send("POST", url, what, headers=headers, json=body)
            _check(response, what)
            try:
                ok = bool(response.json().get("success"))
            except ValueError:
                ok = False
            if not ok:
                raise PurgeError(f"{what} did not succeed: {response.text[:200]}")


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(*, method: str, url: str, body: bytes, key_id: str, secret: str,
                  region: str, service: str, now: dt.datetime) -> dict[str, str]:
    """AWS Signature Version 4 headers (``Authorization``, ``X-Amz-Date``, ...) of a request."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, quote(parts.path or "/", safe="/-_.~"), parts.query,
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{secret}".encode(), day), region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                             f"SignedHeaders={signed}, Signature={signature}",
            "X-Amz-Date": amz_date, "X-Amz-Content-Sha256": payload}


class CloudFrontPurger(_HttpPurger):
    """CloudFront: an invalidation of paths (CloudFront has no tags)."""

    name = "cloudfront"

    def __init__(self, distribution_id: str, key_id: str, secret: str, *,
                 api_url: str = "https://cloudfront.amazonaws.com", timeout: float = 5.0
                 ) -> None:
        super().__init__(timeout=timeout)
        self.distribution_id, self._key_id, self._secret = distribution_id, key_id, secret
        self.api_url = api_url.rstrip("/")

    def purge(self, tags: Sequence[str], paths: Sequence[str]) -> None:
        """One ``CreateInvalidation`` of ``paths`` (3000 a request); tags are not purgeable."""
        url = f"{self.api_url}/2020-05-31/distribution/{quote(self.distribution_id)}/invalidation"
        for chunk in _chunks(paths, 3000):
            items = "".join(f"<Path>{escape(p)}</Path>" for p in chunk)
            body = ('<?xml version="1.0" encoding="UTF-8"?>'
                    '<InvalidationBatch xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">'
                    f"<CallerReference>djscale-{uuid.uuid4().hex}</CallerReference>"
                    f"<Paths><Quantity>{len(chunk)}</Quantity><Items>{items}</Items></Paths>"
                    "</InvalidationBatch>").encode()
            headers = sigv4_headers(method="POST", url=url, body=body, key_id=self._key_id,
                                    secret=self._secret, region="us-east-1",
                                    service="cloudfront", now=dt.datetime.now(dt.UTC))
            headers["Content-Type"] = "text/xml"
            what = "CloudFront CreateInvalidation"
            _check(self._send("POST", url, what, headers=headers, content=body), what, (201,))


def _secret(env: str, key: str) -> str:
    value = os.environ.get(env, "") if env else ""
    if not value:
        raise ConfigurationError(f'DJSCALE["EDGE"]["{key}"] names the environment variable '
                                 f"{env!r}, which is not set: export it in the app servers' "
                                 "environment")
    return value


def purger(settings: conf.EdgeSettings | None = None) -> Purger | None:
    """The purger ``DJSCALE["EDGE"]`` chooses, or None when purging is off."""
    s = settings if settings is not None else conf.get().edge
    soft = s.purge_mode == "soft"
    if s.purger == "varnish":
        return VarnishPurger(s.purge_urls, soft=soft, timeout=s.timeout)
    if s.purger == "fastly":
        return FastlyPurger(s.service_id, _secret(s.token_env, "TOKEN_ENV"), soft=soft,
                            api_url=s.api_url or "https://api.fastly.com", timeout=s.timeout)
    if s.purger == "cloudflare":
        return CloudflarePurger(s.zone_id, _secret(s.token_env, "TOKEN_ENV"),
                                api_url=s.api_url or "https://api.cloudflare.com/client/v4",
                                timeout=s.timeout)
    if s.purger == "cloudfront":
        return CloudFrontPurger(s.distribution_id, _secret(s.aws_key_id_env, "AWS_KEY_ID_ENV"),
                                _secret(s.aws_secret_env, "AWS_SECRET_ENV"),
                                api_url=s.api_url or "https://cloudfront.amazonaws.com",
                                timeout=s.timeout)
    return None
