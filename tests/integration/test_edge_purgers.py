"""Purge backends against a local HTTP server that checks each request's shape, and the
invalidator's retries and failure reporting (with the shared cluster's Redis as cache)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.cache import caches
from prometheus_client import REGISTRY

from djscale import conf
from djscale.cache import cached
from djscale.cache.tags import invalidate_tags
from djscale.edge.invalidation import Invalidator
from djscale.edge.purge import CloudflarePurger, CloudFrontPurger, FastlyPurger, VarnishPurger
from djscale.errors import PurgeError

pytestmark = pytest.mark.integration


class Seen:
    """What the fake API received, and what it answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes = b'{"status": "ok", "success": true}'


@pytest.fixture
def api() -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.requests.append({"method": self.command, "path": self.path,
                                  "headers": dict(self.headers.items()),
                                  "body": self.rfile.read(length)})
            self.send_response(seen.status)
            self.send_header("Content-Length", str(len(seen.body)))
            self.end_headers()
            self.wfile.write(seen.body)

        do_GET = do_POST = do_PURGE = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_varnish_gets_one_xkey_purge_per_server_and_a_purge_per_path(
        api: tuple[str, Seen]) -> None:
    url, seen = api
    VarnishPurger([url, url + "/"], soft=True).purge(["a", "b"], ["/p/1"])
    assert [(r["method"], r["path"], r["headers"].get("xkey-softpurge")) for r in
            seen.requests] == [("PURGE", "/", "a b"), ("PURGE", "/p/1", None)] * 2


def test_fastly_gets_a_surrogate_key_batch_purge(api: tuple[str, Seen]) -> None:
    url, seen = api
    tags = [f"t{i}" for i in range(300)]
    FastlyPurger("SVC1", "fastly-token", soft=True, api_url=url).purge(tags, [])
    assert len(seen.requests) == 2  # 256 keys a request
    first = seen.requests[0]
    assert (first["method"], first["path"]) == ("POST", "/service/SVC1/purge")
    assert first["headers"]["Fastly-Key"] == "fastly-token"
    assert first["headers"]["Fastly-Soft-Purge"] == "1"
    assert json.loads(first["body"]) == {"surrogate_keys": tags[:256]}
    assert json.loads(seen.requests[1]["body"]) == {"surrogate_keys": tags[256:]}


def test_cloudflare_gets_tag_purges_of_30_and_must_say_success(api: tuple[str, Seen]) -> None:
    url, seen = api
    purger = CloudflarePurger("ZONE9", "cf-token", api_url=url, site="https://shop.example")
    purger.purge([f"t{i}" for i in range(31)], ["/a"])
    assert [r["path"] for r in seen.requests] == ["/zones/ZONE9/purge_cache"] * 3
    assert all(r["headers"]["Authorization"] == "Bearer cf-token" for r in seen.requests)
    bodies = [json.loads(r["body"]) for r in seen.requests]
    assert [len(b.get("tags", [])) for b in bodies] == [30, 1, 0]
    assert bodies[2] == {"files": ["https://shop.example/a"]}
    seen.body = b'{"success": false, "errors": [{"code": 1134}]}'
    with pytest.raises(PurgeError, match="did not succeed"):
        purger.purge(["t"], [])


def test_cloudfront_gets_a_signed_invalidation_batch_of_paths(api: tuple[str, Seen]) -> None:
    url, seen = api
    seen.status = 201
    CloudFrontPurger("EDIST", "AKID", "secret", api_url=url).purge(["ignored"],
                                                                  ["/a", "/b&c"])
    (request,) = seen.requests
    assert request["path"] == "/2020-05-31/distribution/EDIST/invalidation"
    assert request["headers"]["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/")
    assert "/us-east-1/cloudfront/aws4_request" in request["headers"]["Authorization"]
    body = request["body"].decode()
    assert "<Quantity>2</Quantity>" in body and "<Path>/b&amp;c</Path>" in body
    assert "<CallerReference>djscale-" in body


def test_a_refused_purge_is_a_purge_error_naming_the_edge(api: tuple[str, Seen]) -> None:
    url, seen = api
    seen.status = 500
    with pytest.raises(PurgeError, match="Fastly surrogate-key purge answered 500"):
        FastlyPurger("S", "t", api_url=url).purge(["x"], [])
    with pytest.raises(PurgeError, match="ConnectError"):
        VarnishPurger(["http://127.0.0.1:9"]).purge(["x"], [])


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_save_evicts_tagged_cache_entries_everywhere_and_purges_the_edge(
        api: tuple[str, Seen]) -> None:
    url, seen = api
    tag = f"test.thing:{uuid.uuid4().hex}"
    calls: list[int] = []

    @cached(timeout=60, tags=lambda n: [tag])
    def thing(n: int) -> int:
        calls.append(n)
        return len(calls)

    assert thing(1) == thing(1) == 1
    settings = conf.EdgeSettings(purger="varnish", batch_ms=1, retries=0)
    invalidator = Invalidator(VarnishPurger([url]), settings=settings)
    invalidator.submit([tag])
    assert invalidator.flush(10)
    assert thing(1) == 2  # evicted from Redis and this process's L1
    assert seen.requests[-1]["headers"]["xkey-purge"] == tag


def test_a_failing_edge_is_retried_then_counted_and_logged(
        api: tuple[str, Seen], caplog: pytest.LogCaptureFixture) -> None:
    url, seen = api
    seen.status = 503
    settings = conf.EdgeSettings(purger="varnish", batch_ms=1, retries=2)
    invalidator = Invalidator(VarnishPurger([url]), settings=settings)
    failures, retries = (_value("djscale_edge_purge_failures_total"),
                         _value("djscale_edge_purge_retries_total"))
    with caplog.at_level(logging.WARNING, logger="djscale.edge"):
        invalidator.submit(["a", "b"])
        assert invalidator.flush(10)
    assert len(seen.requests) == 3
    assert _value("djscale_edge_purge_retries_total") == retries + 2
    assert _value("djscale_edge_purge_failures_total") == failures + 1
    assert "edge purge gave up after 3 attempts" in caplog.text and "tags=a b" in caplog.text
    assert caches["default"] is not None


def test_submissions_arriving_together_are_purged_in_one_batch(api: tuple[str, Seen]) -> None:
    url, seen = api
    gate = threading.Event()
    edge = VarnishPurger([url])
    purge: Callable[..., None] = edge.purge

    def slow(tags: Sequence[str], paths: Sequence[str]) -> None:
        gate.wait(5)
        purge(tags, paths)

    edge.purge = slow  # type: ignore[method-assign]
    invalidator = Invalidator(edge, settings=conf.EdgeSettings(purger="varnish", batch_ms=50,
                                                               repurge_ms=0))
    invalidator.submit(["first"])
    for i in range(20):
        invalidator.submit([f"t{i}"])
    gate.set()
    assert invalidator.flush(10)
    headers = [r["headers"]["xkey-purge"] for r in seen.requests]
    assert len(headers) <= 2 and set(" ".join(headers).split()) == {
        "first", *(f"t{i}" for i in range(20))}


def test_inline_purges_before_returning_and_purges_again_what_was_stored_after(
        api: tuple[str, Seen]) -> None:
    url, seen = api
    tag = f"test.inline:{uuid.uuid4().hex}"
    calls: list[int] = []

    @cached(timeout=60, tags=lambda n: [tag])
    def thing(n: int) -> int:
        calls.append(n)
        return len(calls)

    assert thing(1) == 1
    settings = conf.EdgeSettings(purger="varnish", batch_ms=1, retries=0, repurge_ms=200)
    invalidator = Invalidator(VarnishPurger([url]), settings=settings)
    invalidator.run([tag])
    # Done when run() returns: the edge was told, the cache entry is gone.
    assert [r["headers"]["xkey-purge"] for r in seen.requests] == [tag]
    # A request that read the old data before the purge stores it after: the repurge
    # removes it again, from the cache and the edge.
    assert thing(1) == 2 and thing(1) == 2
    delays = invalidator.repurge_delays()
    assert delays[0] == 0.2 and len(delays) <= 2  # and after the L1 timeout, if any
    assert invalidator.flush(15)
    assert [r["headers"]["xkey-purge"] for r in seen.requests] == [tag] * (1 + len(delays))
    assert thing(1) == 3


def test_a_failed_inline_purge_is_retried_in_the_background_and_counted(
        api: tuple[str, Seen], caplog: pytest.LogCaptureFixture) -> None:
    url, seen = api
    seen.status = 503
    settings = conf.EdgeSettings(purger="varnish", batch_ms=1, retries=5, repurge_ms=0)
    invalidator = Invalidator(VarnishPurger([url]), settings=settings)
    ok, failures, retries = (_value("djscale_edge_purges_total"),
                             _value("djscale_edge_purge_failures_total"),
                             _value("djscale_edge_purge_retries_total"))
    with caplog.at_level(logging.WARNING, logger="djscale.edge"):
        invalidator.run(["late"])
        assert seen.requests  # tried once, in this thread
        seen.status = 200
        assert invalidator.flush(10)
    assert seen.requests[-1]["headers"]["xkey-purge"] == "late"
    assert _value("djscale_edge_purges_total") == ok + 1
    assert _value("djscale_edge_purge_retries_total") >= retries + 1
    assert _value("djscale_edge_purge_failures_total") == failures
    assert "in the committing thread failed, retrying in the background" in caplog.text


def test_after_a_failed_inline_purge_the_next_ones_go_to_the_background(
        api: tuple[str, Seen]) -> None:
    url, seen = api
    seen.status = 503
    settings = conf.EdgeSettings(purger="varnish", batch_ms=1, retries=0, repurge_ms=0)
    invalidator = Invalidator(VarnishPurger([url]), settings=settings)
    invalidator.run(["first"])
    assert invalidator.flush(10)
    tried = len(seen.requests)  # inline, then the background's attempt
    gate = threading.Event()
    edge = invalidator.edge
    assert edge is not None
    purge = edge.purge

    def slow(tags: Sequence[str], paths: Sequence[str]) -> None:
        gate.wait(5)
        purge(tags, paths)

    edge.purge = slow  # type: ignore[method-assign]
    invalidator.run(["second"])  # returns at once: the purge waits in the background
    assert len(seen.requests) == tried
    gate.set()
    assert invalidator.flush(10)
    assert seen.requests[-1]["headers"]["xkey-purge"] == "second"


def test_an_entry_computed_while_an_invalidation_empties_the_index_is_indexed_again() -> None:
    """An invalidation stamps the tags, then empties their index: a computation that read
    the stamps after the first step and indexed itself before the second stores fresh
    data, but must still be found by the next invalidation."""
    from djscale.cache.tags import _l2_client, tag_key, tag_token

    cache = caches["default"]
    tag = f"test.reindex:{uuid.uuid4().hex}"
    client = _l2_client(cache)
    calls: list[int] = []

    @cached(timeout=60, tags=lambda n: [tag])
    def thing(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:  # the tail of an invalidation that stamped before we started
            client.delete(cache.make_key(tag_key(tag_token(tag))))
        return len(calls)

    assert thing(1) == 1 and thing(1) == 1  # stored (the stamps did not change)
    invalidate_tags(cache, [tag])  # the next write: must find the entry
    assert thing(1) == 2
