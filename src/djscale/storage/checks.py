"""System checks of media storage (ids ``djscale.W100``-``djscale.W109``).

- **W100**: media go to a ``FileSystemStorage`` while the topology runs more than one
  app server, and nothing says the folder is shared: a file uploaded through one server
  is missing on the others.
- **W101**: :class:`~djscale.storage.LocalClusterStorage` outside a local cluster: its
  folder is on one machine only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.files.storage import FileSystemStorage
from django.utils.module_loading import import_string

from djscale import conf
from djscale.localstate import STATE_FILE, default_state_dir

__all__ = ["check_shared_media"]


def _default_backend() -> type[Any] | None:
    backend = getattr(settings, "STORAGES", {}).get("default", {}).get("BACKEND", "")
    try:
        cls = import_string(backend)
    except ImportError:
        return None  # Django reports a bad backend path itself
    return cls if isinstance(cls, type) else None


@register(Tags.files, "djscale")
def check_shared_media(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when uploaded media would live on one app server's disk."""
    deployment = conf.get(validate=False).deployment
    backend = _default_backend()
    if backend is None or not issubclass(backend, FileSystemStorage):
        return []
    if getattr(backend, "djscale_shared", False):
        if not (default_state_dir() / STATE_FILE).exists():
            return [Warning(
                f"{backend.__name__} keeps media in a local cluster's state folder, but "
                f"no local cluster runs from {default_state_dir()}.",
                hint="It is meant for `djscale cluster` and tests; in production use "
                     "djscale.storage.s3_storages(bucket=...) (django-storages).",
                id="djscale.W101",
            )]
        return []
    servers = deployment.app_servers
    if servers > 1 and not deployment.shared_media_root:
        return [Warning(
            f"Media are stored by {backend.__module__}.{backend.__name__} in "
            f"MEDIA_ROOT={str(settings.MEDIA_ROOT)!r} on each of {servers} app servers: "
            "a file uploaded through one server is missing on the others.",
            hint='Use an S3-compatible bucket (STORAGES = djscale.storage.s3_storages('
                 'bucket=...)), or djscale.storage.local_cluster_storages() for the local '
                 'cluster; if MEDIA_ROOT is a shared mount (NFS, EFS), set '
                 'DJSCALE["SHARED_MEDIA_ROOT"] = True.',
            id="djscale.W100",
        )]
    return []
