"""Read-only view of a running local cluster's state file (runtime side).

``<state_dir>/cluster.json`` maps each service name (``pg-default``,
``pg-default-replica1``, ``redis``, ``app-1``, ``lb``, ...) to its process record. The
local cluster (:mod:`djscale.cluster.state`, tooling) writes it;
:func:`djscale.settings.from_topology` and :mod:`djscale.storage` read it through this
module to resolve ``auto`` ports and find the shared media folder.

This module belongs to the runtime: it imports only the standard library and must never
import :mod:`djscale.cluster` (app servers import it through their settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "LocalState", "default_state_dir"]

STATE_FILE = "cluster.json"
"""Name of the state file inside a state folder."""


def default_state_dir() -> Path:
    """``$DJSCALE_STATE_DIR`` or ``.djscale`` in the current folder."""
    return Path(os.environ.get("DJSCALE_STATE_DIR", ".djscale")).absolute()


@dataclass
class LocalState:
    """Records of the services of one local cluster, keyed by service name."""

    state_dir: Path
    topology: str = ""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """Where this state is stored."""
        return self.state_dir / STATE_FILE

    @classmethod
    def read(cls, state_dir: Path) -> LocalState:
        """Load the state of ``state_dir`` (empty when no cluster was started there)."""
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(state_dir=Path(state_dir))
        return cls(state_dir=Path(state_dir), topology=data.get("topology", ""),
                   services=dict(data.get("services", {})))

    def address(self, service: str) -> tuple[str, int] | None:
        """``(host, port)`` of a service, or None when it is not in the state."""
        record = self.services.get(service)
        if not record or not record.get("port"):
            return None
        return str(record["host"]), int(record["port"])
