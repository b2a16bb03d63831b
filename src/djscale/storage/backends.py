"""Storage backends for media that every app server must see.

:class:`LocalClusterStorage` keeps media in ``<cluster state dir>/media``, a folder shared
by every app server of the local cluster (they run on one machine and all get
``DJSCALE_STATE_DIR``). It is the local stand-in for the S3 bucket used in production
(:func:`djscale.storage.s3_storages`); it is not shared between machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage

from djscale.localstate import default_state_dir

__all__ = ["LocalClusterStorage", "local_media_root"]


def local_media_root(state_dir: str | Path | None = None) -> Path:
    """``<state_dir>/media``; the state dir defaults to ``$DJSCALE_STATE_DIR``/``.djscale``."""
    base = Path(state_dir) if state_dir is not None else default_state_dir()
    return base.absolute() / "media"


class LocalClusterStorage(FileSystemStorage):
    """FileSystemStorage in the local cluster's shared media folder."""

    djscale_shared = True
    """Tells the djscale.W100 check that every app server sees the same files."""

    def __init__(self, location: str | Path | None = None, base_url: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(location=str(location or local_media_root()), base_url=base_url,
                         **kwargs)
