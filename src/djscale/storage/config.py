"""``STORAGES`` settings for shared media: S3 (production) or the local cluster's folder.

Only computes settings; never touches a bucket or a folder::

    STORAGES = s3_storages(bucket="shop-media", custom_domain="media.example.com")
    STORAGES = local_cluster_storages()     # the local cluster / tests
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATICFILES", "local_cluster_storages", "s3_storages"]

STATICFILES = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}


def s3_storages(*, bucket: str, endpoint_url: str = "", region: str = "",
                custom_domain: str = "", location: str = "media",
                signed_urls: bool = False,
                staticfiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """``STORAGES`` with media in an S3-compatible bucket through django-storages.

    Credentials are not settings: boto3 reads them from the environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or the instance/pod role.
    ``endpoint_url`` selects another S3-compatible service (MinIO, Ceph, R2...);
    ``custom_domain`` serves media from a CDN; ``signed_urls`` for private media.
    Files are never overwritten (two app servers saving ``a.png`` get two names).
    """
    if not bucket:
        from djscale.errors import ConfigurationError

        raise ConfigurationError("s3_storages(bucket=...) needs a bucket name")
    options: dict[str, Any] = {
        "bucket_name": bucket,
        "location": location,
        "file_overwrite": False,
        "querystring_auth": signed_urls,
    }
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if region:
        options["region_name"] = region
    if custom_domain:
        options["custom_domain"] = custom_domain
    return {
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
        "staticfiles": staticfiles or dict(STATICFILES),
    }


def local_cluster_storages(*, staticfiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """``STORAGES`` with media in the local cluster's shared folder."""
    return {
        "default": {"BACKEND": "djscale.storage.LocalClusterStorage"},
        "staticfiles": staticfiles or dict(STATICFILES),
    }
