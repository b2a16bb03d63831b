"""Database routing over PostgreSQL primaries and replicas.

Public API (see docs/replicas.md)::

    from djscale.db import read_alias, record_write, use_primary, use_replica

- :mod:`djscale.db.routers`     PrimaryReplicaRouter (thin: asks ``replicas``)
- :mod:`djscale.db.replicas`    which alias serves a read/write of a group
- :mod:`djscale.db.pool`        per-process replica health and the selection policy
- :mod:`djscale.db.probe`       where lag is measured (SQL probes)
- :mod:`djscale.db.consistency` read-your-writes state in contextvars, LSN tokens
- :mod:`djscale.db.middleware`  cookie/header tokens and GET failover
- :mod:`djscale.db.failover`    recovery from a broken replica connection
- :mod:`djscale.db.signals`     write detection on primaries, Celery token hand-off
- :mod:`djscale.db.config`      replication groups read from settings

Names are imported lazily so that importing this package never touches settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from djscale.db.consistency import use_primary, use_replica
    from djscale.db.failover import failover_reads
    from djscale.db.replicas import read_alias, record_write, write_alias

__all__ = ["failover_reads", "read_alias", "record_write", "use_primary", "use_replica",
           "write_alias"]

_EXPORTS = {
    "read_alias": "djscale.db.replicas",
    "write_alias": "djscale.db.replicas",
    "record_write": "djscale.db.replicas",
    "use_primary": "djscale.db.consistency",
    "use_replica": "djscale.db.consistency",
    "failover_reads": "djscale.db.failover",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'djscale.db' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
