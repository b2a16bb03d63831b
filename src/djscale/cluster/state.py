"""The state file of a running local cluster: which service listens where.

``<state_dir>/cluster.json`` maps each service name (``pg-default``,
``pg-default-replica1``, ``redis``, ``app-1``, ``lb``, ...) to its process record. The
cluster writes it through :class:`ClusterState`; the runtime reads it through
:mod:`djscale.localstate` (the read-only half, which Django settings import without
loading the cluster tooling).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
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

    @classmethod
    @contextlib.contextmanager
    def transaction(cls, state_dir: Path) -> Iterator[ClusterState]:
        """Read the state under an exclusive lock, yield it, write it back on success.

        Several processes change one cluster's records (the ``djscale`` commands, the
        watchdog restarting a crashed service): each changes what it owns inside a
        transaction, so none overwrites another's change with a stale copy.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "cluster.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = cls.read(state_dir)
            yield state
            state.write()
        finally:
            os.close(fd)

    def write(self) -> None:
        """Store the state atomically."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"topology": self.topology, "services": self.services},
                                  indent=2), encoding="utf-8")
        tmp.replace(self.path)
