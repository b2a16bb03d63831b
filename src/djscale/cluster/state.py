"""The state file of a running local cluster: which service listens where.

``<state_dir>/cluster.json`` maps each service name (``pg-default``,
``pg-default-replica1``, ``redis``, ``app-1``, ``lb``, ...) to its process record. The
cluster writes it through :class:`ClusterState`; the runtime reads it through
:mod:`djscale.localstate` (the read-only half, which Django settings import without
loading the cluster tooling).
"""

from __future__ import annotations

import json
from pathlib import Path

from djscale.localstate import STATE_FILE, LocalState, default_state_dir

__all__ = ["STATE_FILE", "ClusterState", "default_state_dir"]


class ClusterState(LocalState):
    """Records of the services of one local cluster, keyed by service name (writable)."""

    @classmethod
    def read(cls, state_dir: Path) -> ClusterState:
        """Load the state of ``state_dir`` (empty when no cluster was started there)."""
        state = LocalState.read(state_dir)
        return cls(state_dir=state.state_dir, topology=state.topology, services=state.services)

    def write(self) -> None:
        """Store the state atomically."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"topology": self.topology, "services": self.services},
                                  indent=2), encoding="utf-8")
        tmp.replace(self.path)
