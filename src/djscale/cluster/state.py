"""The state file of a running local cluster: which service listens where.

``<state_dir>/cluster.json`` maps each service name (``pg-default``,
``pg-default-replica1``, ``redis``, ``app-1``, ``lb``, ...) to its process record. The
cluster writes it; :func:`djscale.settings.from_topology` reads it to resolve ``auto``
ports. This module is deliberately light (json only) because Django settings import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "ClusterState", "default_state_dir"]

STATE_FILE = "cluster.json"


def default_state_dir() -> Path:
    """``$DJSCALE_STATE_DIR`` or ``.djscale`` in the current folder."""
    return Path(os.environ.get("DJSCALE_STATE_DIR", ".djscale")).absolute()


@dataclass
class ClusterState:
    """Records of the services of one local cluster, keyed by service name."""

    state_dir: Path
    topology: str = ""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """Where this state is stored."""
        return self.state_dir / STATE_FILE

    @classmethod
    def read(cls, state_dir: Path) -> ClusterState:
        """Load the state of ``state_dir`` (empty when no cluster was started there)."""
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(state_dir=state_dir)
        return cls(state_dir=state_dir, topology=data.get("topology", ""),
                   services=dict(data.get("services", {})))

    def write(self) -> None:
        """Store the state atomically."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"topology": self.topology, "services": self.services},
                                  indent=2), encoding="utf-8")
        tmp.replace(self.path)

    def address(self, service: str) -> tuple[str, int] | None:
        """``(host, port)`` of a service, or None when it is not in the state."""
        record = self.services.get(service)
        if not record or not record.get("port"):
            return None
        return str(record["host"]), int(record["port"])
