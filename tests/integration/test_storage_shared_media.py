"""An image uploaded through app server A is served by app server B (local cluster)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from djscale.cluster import LocalCluster
from djscale.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def media_cluster(djscale_cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    cluster = djscale_cluster_factory(
        {"project": {"name": "mediatest", "pythonpath": str(ROOT),
                     "settings": "tests.queryapp.cluster_settings",
                     "wsgi": "tests.wsgi:application"},
         "postgres": {"database": "mediatest"},
         "app": {"servers": 2, "workers": 1}},
        parts=("postgres", "redis", "app"), name="media")
    try:
        yield cluster
    finally:
        cluster.down(purge=True)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _upload(host: str, port: int, filename: str, data: bytes) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://{host}:{port}/queryapp/upload", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _get(host: str, port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, b"", ""


def test_an_image_uploaded_through_app_server_a_is_served_by_app_server_b(
        media_cluster: LocalCluster) -> None:
    a_host, a_port = media_cluster.address("app-1")
    b_host, b_port = media_cluster.address("app-2")
    image = _png()
    saved = _upload(a_host, a_port, "product.png", image)
    assert saved["url"] == f"/media/{saved['name']}"

    status, served, content_type = _get(b_host, b_port, saved["url"])
    assert (status, content_type) == (200, "image/png")
    assert served == image
    # Both servers wrote and read the cluster's one media folder.
    assert (media_cluster.state_dir / "media" / saved["name"]).read_bytes() == image


def test_the_same_name_uploaded_twice_keeps_both_files(media_cluster: LocalCluster) -> None:
    first = _upload(*media_cluster.address("app-1"), "same.png", _png())
    second = _upload(*media_cluster.address("app-2"), "same.png", _png())
    assert first["name"] != second["name"]


@pytest.mark.parametrize("path", ["/media/uploads/missing.png", "/media/../cluster.json",
                                  "/media/%2e%2e/cluster.json"])
def test_missing_files_and_paths_outside_the_media_folder_are_404(
        media_cluster: LocalCluster, path: str) -> None:
    assert _get(*media_cluster.address("app-2"), path)[0] == 404


def test_a_file_that_is_not_an_image_is_refused(media_cluster: LocalCluster) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _upload(*media_cluster.address("app-1"), "evil.png", b"not an image")
    assert info.value.code == 400
