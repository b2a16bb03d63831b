"""Cache-Control: public only for anonymous safe requests of views that opt in."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from djscale.http.cache_control import public_cache

# Other middleware of the test settings (read-your-writes) may touch the database.
pytestmark = pytest.mark.django_db


def _cc(response: object) -> set[str]:
    header = response["Cache-Control"]  # type: ignore[index]
    return {part.strip().split("=")[0] for part in header.split(",")}


def _vary(response: object) -> set[str]:
    return {v.strip().lower() for v in response.get("Vary", "").split(",") if v.strip()}  # type: ignore[attr-defined]


@pytest.fixture
def client() -> Client:
    return Client()


def test_opted_in_view_is_public_for_anonymous_get_with_vary(client: Client) -> None:
    response = client.get("/edge/catalog")
    assert response["Cache-Control"] == "public, max-age=60, s-maxage=300"
    assert {"cookie", "authorization", "accept-encoding"} <= _vary(response)


def test_opted_in_view_answers_conditional_get_with_304(client: Client) -> None:
    etag = client.get("/edge/catalog")["ETag"]
    again = client.get("/edge/catalog", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_opted_in_view_is_private_with_a_session(client: Client) -> None:
    client.get("/edge/session")
    response = client.get("/edge/catalog")
    assert "public" not in _cc(response)
    assert "s-maxage" not in _cc(response)
    assert "private" in _cc(response)


def test_opted_in_view_is_private_with_authorization(client: Client) -> None:
    response = client.get("/edge/catalog", headers={"Authorization": "Bearer x"})
    assert "public" not in _cc(response) and "private" in _cc(response)


def test_a_response_setting_a_cookie_is_no_store(client: Client) -> None:
    response = client.get("/edge/catalog-cookie")
    assert {"private", "no-store"} <= _cc(response)
    assert "public" not in _cc(response)


def test_starting_a_session_is_no_store(client: Client) -> None:
    response = client.get("/edge/session")
    assert {"private", "no-store"} <= _cc(response)


def test_views_that_did_not_opt_in_are_private(client: Client) -> None:
    assert client.get("/edge/account")["Cache-Control"] == "private, no-cache"


def test_django_public_decorator_counts_as_opt_in_but_not_with_a_session(
        client: Client) -> None:
    assert "public" in _cc(client.get("/edge/django-public"))
    client.get("/edge/session")
    assert "public" not in _cc(client.get("/edge/django-public"))


def test_unsafe_methods_are_never_stored(client: Client) -> None:
    response = client.post("/edge/catalog")
    assert "no-store" in _cc(response) and "public" not in _cc(response)


def test_url_pattern_setting_opts_paths_in(client: Client, settings: object) -> None:

    with override_settings(DJSCALE={"PUBLIC_CACHE_PATHS": [(r"^/edge/acc", 15)]}):
        assert client.get("/edge/account")["Cache-Control"] == "public, max-age=15"


@pytest.mark.django_db
def test_authenticated_user_never_gets_public(client: Client) -> None:
    from django.contrib.auth.models import User

    user = User.objects.create_user("alice", password="pw")
    client.force_login(user)
    for url in ("/edge/catalog", "/edge/django-public", "/edge/account"):
        response = client.get(url)
        assert "public" not in _cc(response), url
        assert "private" in _cc(response), url


def test_public_cache_rejects_negative_ages() -> None:
    with pytest.raises(ValueError):
        public_cache(max_age=-1)
