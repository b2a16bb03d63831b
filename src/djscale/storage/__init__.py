"""Shared media storage: uploads every app server can read.

- Production: an S3-compatible bucket via django-storages, ``STORAGES =``
  :func:`s3_storages` ``(bucket=...)`` (``pip install 'djscale[s3]'``).
- Local cluster and tests: :class:`LocalClusterStorage` (``STORAGES =``
  :func:`local_cluster_storages` ``()``), one folder under the cluster's state folder.
- :mod:`djscale.storage.checks`: ``djscale.W100`` warns about per-server media folders.
- ``djscale.storage.urls``: serves media from the default storage (local cluster).

Guide: ``docs/storage.md``.
"""

from __future__ import annotations

from djscale.storage import checks as _checks  # noqa: F401 - registers the system checks
from djscale.storage.backends import LocalClusterStorage, local_media_root
from djscale.storage.config import local_cluster_storages, s3_storages

__all__ = ["LocalClusterStorage", "local_cluster_storages", "local_media_root", "s3_storages"]
