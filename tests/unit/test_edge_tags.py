"""Surrogate-key tags on responses, and the request shape of the CloudFront signature."""

from __future__ import annotations

import datetime as dt
import re
from unittest import mock

import pytest
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from djscale.edge import TAG_HEADER, add_tags, edge_tags, model_tags, tag_token, tags_of
from djscale.edge.purge import sigv4_headers


def test_a_model_instance_is_tagged_with_its_class_and_itself() -> None:
    assert model_tags(User(pk=7)) == ["auth.user", "auth.user:7"]
    assert model_tags(User) == ["auth.user"]
    assert model_tags(User, 3) == ["auth.user", "auth.user:3"]
    assert model_tags(User()) == ["auth.user"]  # unsaved: only the class


def test_tags_of_mixes_strings_instances_pairs_and_classes_once_each() -> None:
    assert tags_of(["a", User(pk=1), (User, 1), Group, "a"]) == [
        "a", "auth.user", "auth.user:1", "auth.group"]


@pytest.mark.parametrize("bad", ["", 3.5, None])
def test_an_empty_tag_or_an_item_that_is_no_tag_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="tag"):
        tags_of([bad])


@pytest.mark.parametrize("text", ["two words", "nul\x00byte", "caf\u00e9", "cr\r\nSet-Cookie: x",
                                  "100% sure", "x" * 257, "\u00e9" * 300])
def test_any_text_becomes_one_visible_ascii_token_of_at_most_256(text: str) -> None:
    token = tag_token(f"shop.category:{text}")
    assert re.fullmatch(r"[\x21-\x7e]{1,256}", token), token
    assert tags_of([f"shop.category:{text}"]) == [token]  # the purge names the same tag
    response = add_tags(HttpResponse(), f"shop.category:{text}")
    assert response[TAG_HEADER] == token


def test_tokens_of_different_texts_differ() -> None:
    texts = ["a b", "a+b", "a\x00b", "x" * 300, "x" * 301, "\u00e9", "\u00e8"]
    assert len({tag_token(t) for t in texts}) == len(texts)


def test_visible_ascii_tags_and_integer_pks_are_unchanged_and_tokens_are_their_own() -> None:
    assert tag_token("products.category:shoes-2") == "products.category:shoes-2"
    for text in ["a b", "100%", "\u00e9" * 300, "x" * 999]:
        assert tag_token(tag_token(text)) == tag_token(text)
    assert model_tags(User, "a b") == ["auth.user", "auth.user:a%20b"]


def test_add_tags_merges_into_one_header_for_fastly_and_varnish_and_one_for_cloudflare() -> None:
    response = add_tags(HttpResponse(), "page:home", User(pk=2))
    add_tags(response, "page:home", "extra")
    assert response[TAG_HEADER] == "page:home auth.user auth.user:2 extra"
    assert response["Cache-Tag"] == "page:home,auth.user,auth.user:2,extra"


def test_a_huge_tag_list_falls_back_to_class_tags() -> None:
    response = add_tags(HttpResponse(), *((User, i) for i in range(3000)))
    assert response[TAG_HEADER] == "auth.user"


def test_edge_tags_calls_its_callables_with_the_views_arguments() -> None:
    @edge_tags("list", lambda request, pk: [(User, pk)])
    def view(request: HttpRequest, pk: int) -> HttpResponse:
        return HttpResponse("x")

    response = view(RequestFactory().get("/"), 5)
    assert response[TAG_HEADER] == "list auth.user auth.user:5"


def test_the_cloudfront_signature_is_the_one_botocore_computes() -> None:
    botocore = pytest.importorskip("botocore")
    from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

    url = "https://cloudfront.amazonaws.com/2020-05-31/distribution/E123/invalidation"
    body = b"<InvalidationBatch/>"
    now = dt.datetime(2026, 12, 4, 12, 30, 15, tzinfo=dt.UTC)
    ours = sigv4_headers(method="POST", url=url, body=body, key_id="AKIDEXAMPLE",
                         secret="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                         region="us-east-1", service="cloudfront", now=now)
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"X-Amz-Content-Sha256": ours["X-Amz-Content-Sha256"]})
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                       "cloudfront", "us-east-1")
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        signer.add_auth(request)
    assert botocore.__version__
    assert ours["Authorization"] == request.headers["Authorization"]
