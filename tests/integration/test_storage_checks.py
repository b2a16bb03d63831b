"""djscale.W100/W101: media on one app server's disk are flagged; shared media are not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from djscale.storage import checks, local_cluster_storages, s3_storages

FS = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
      "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


def _ids(**djscale: Any) -> list[str]:
    with override_settings(DJSCALE={**djscale}):
        return [m.id for m in checks.check_shared_media() if m.id]


def test_filesystem_media_under_two_app_servers_warn(tmp_path: Path) -> None:
    with override_settings(STORAGES=FS, MEDIA_ROOT=str(tmp_path)):
        assert _ids(APP_SERVERS=2) == ["djscale.W100"]
        [message] = checks.check_shared_media()
    assert "s3_storages" in (message.hint or "") and "SHARED_MEDIA_ROOT" in (message.hint or "")


def test_filesystem_media_with_one_app_server_are_fine() -> None:
    with override_settings(STORAGES=FS):
        assert _ids(APP_SERVERS=1) == []


def test_a_media_root_declared_shared_is_fine() -> None:
    with override_settings(STORAGES=FS):
        assert _ids(APP_SERVERS=4, SHARED_MEDIA_ROOT=True) == []


def test_a_bucket_is_fine() -> None:
    storages = {**FS, "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"}}
    with override_settings(STORAGES=storages):
        assert _ids(APP_SERVERS=4) == []


def test_local_cluster_storage_is_fine_inside_a_local_cluster(
        djscale_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJSCALE_STATE_DIR", str(djscale_cluster.state_dir))
    with override_settings(STORAGES=local_cluster_storages()):
        assert _ids(APP_SERVERS=2) == []


def test_local_cluster_storage_outside_a_local_cluster_warns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJSCALE_STATE_DIR", str(tmp_path / "nothing-runs-here"))
    with override_settings(STORAGES=local_cluster_storages()):
        assert _ids(APP_SERVERS=2) == ["djscale.W101"]


def test_the_check_runs_with_djangos_check_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with override_settings(STORAGES=FS, MEDIA_ROOT=str(tmp_path),
                           DJSCALE={"APP_SERVERS": 3}):
        call_command("check", tags=["djscale"])
    assert "djscale.W100" in capsys.readouterr().err


def test_s3_settings_never_overwrite_and_keep_credentials_out() -> None:
    storages = s3_storages(bucket="shop-media", endpoint_url="http://127.0.0.1:9000",
                           custom_domain="media.example.com")
    options = storages["default"]["OPTIONS"]
    assert storages["default"]["BACKEND"] == "storages.backends.s3.S3Storage"
    assert options["file_overwrite"] is False
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    assert not any("key" in k.lower() or "secret" in k.lower() for k in options)


def test_s3_settings_build_a_django_storages_backend_that_serves_from_the_cdn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("storages.backends.s3")
    from django.utils.module_loading import import_string

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    config = s3_storages(bucket="shop-media", region="eu-west-1",
                         custom_domain="media.example.com")["default"]
    storage = import_string(config["BACKEND"])(**config["OPTIONS"])
    assert storage.bucket_name == "shop-media"
    assert storage.url("products/1.png") == "https://media.example.com/media/products/1.png"


@pytest.mark.parametrize("media_url, prefix", [
    ("/media/", "media/"), ("", "media/"), ("uploads", "uploads/"),
    ("https://cdn.example.com/shop/media/", "shop/media/"),
])
def test_media_urls_follow_media_url_path(media_url: str, prefix: str) -> None:
    from djscale.storage.urls import media_prefix

    assert media_prefix(media_url) == prefix
