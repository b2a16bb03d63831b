"""The gateway's target check: which request targets may be forwarded (no server)."""

from __future__ import annotations

import pytest

from djscale.services.gateway import _bad_target


def scope(raw_path: bytes) -> dict[str, object]:
    return {"type": "http", "path": raw_path.decode("latin-1"), "raw_path": raw_path}


@pytest.mark.parametrize("target", [
    b"/api/users/1", b"/api/products/?category=a..b", b"/api/caf%C3%A9", b"/api/a.b/c..d",
    b"/api/.well-known", b"/api/%F0%9F%99%82", b"/",
])
def test_ordinary_paths_may_be_forwarded(target: bytes) -> None:
    assert _bad_target(scope(target)) is None


@pytest.mark.parametrize("target", [
    b"/api/../admin", b"/api/x/..", b"/api/./x", b"/api/%2e%2e/x", b"/api/%2E%2e/x",
    b"/api/a%2F..%2Fb", b"/api/a%2f%2e%2e%2fb", b"/api/a\\..\\b", b"/api/a%5C..%5Cb",
])
def test_dot_segments_are_refused(target: bytes) -> None:
    assert _bad_target(scope(target)) == "the path contains '.' or '..' segments"


@pytest.mark.parametrize("target", [b"/api/%FF", b"/api/%C0%AF", b"/api/%ED%A0%80",
                                    b"/api/\xff"])
def test_paths_that_are_not_utf8_are_refused(target: bytes) -> None:
    assert _bad_target(scope(target)) == "the path is not valid UTF-8"


def test_a_nul_in_the_path_is_refused() -> None:
    assert _bad_target(scope(b"/api/a%00b")) == "the path contains a NUL byte"


@pytest.mark.parametrize("target", [b"http://evil.example/api/x", b"evil.example:443", b"*"])
def test_targets_that_are_not_paths_are_refused(target: bytes) -> None:
    # What a server that keeps the raw target (h11) hands over for absolute-form targets.
    assert _bad_target(scope(target)) == "the request target must be a path (origin-form)"


def test_the_query_string_is_not_the_path() -> None:
    assert _bad_target(scope(b"/api/x?next=/../admin")) is None
