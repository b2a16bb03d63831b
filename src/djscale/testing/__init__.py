"""Real services for tests: boot a topology once per test session, stop it at the end.

Two entry points:

- :func:`shared_cluster` boots the cluster a Django *test settings module* needs, once per
  process tree: the first caller boots it under a temporary folder and exports
  ``DJSCALE_STATE_DIR``; child processes (gunicorn app servers, Celery workers started by
  the tests) find it there and reuse it. Use it in the settings module::

      from djscale.testing import shared_cluster
      from djscale.settings import from_topology
      cluster = shared_cluster(BASE_DIR / "topology.toml")
      globals().update(from_topology(cluster.topology, state_dir=cluster.state_dir))

- :class:`ClusterFactory` (the ``djscale_cluster_factory`` pytest fixture) boots further,
  independent clusters from a topology mapping for tests that break things.

Every cluster booted here is stopped and its data deleted when the session ends (also
when a test fails or the run is interrupted), via the pytest plugin's session hook and
an ``atexit`` fallback. ``SIGTERM`` and ``SIGHUP`` (``timeout``, a CI runner cancelling a
job, a closed terminal) would end the process without either, so while clusters are
owned here they are turned into :class:`KeyboardInterrupt`: the run unwinds as on
Ctrl-C and the clusters are stopped; a second signal ends the process at once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from djscale.cluster import PARTS, LocalCluster
from djscale.cluster.state import ClusterState
from djscale.errors import MissingDependency
from djscale.topology import Topology, load, parse

__all__ = ["ClusterFactory", "shared_cluster", "stop_all", "write_topology"]

_owned: list[LocalCluster] = []
_shared: LocalCluster | None = None

DEFAULT_PARTS = ("postgres", "redis")
FACTORY_PARTS = tuple(p for p in PARTS if p not in ("dashboard", "watchdog"))
"""What a factory cluster boots unless told otherwise: everything but the dashboard and
the watchdog (a test that kills a service decides itself whether something restarts it)."""


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_handlers_installed = False


def _register(cluster: LocalCluster) -> LocalCluster:
    if not _owned:
        atexit.register(stop_all)
        _install_signal_handlers()
    _owned.append(cluster)
    return cluster


def _install_signal_handlers() -> None:
    """Unwind (and so stop the owned clusters) on SIGTERM/SIGHUP, if nobody else handles them."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    for sig in _TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _terminate)


def _terminate(signum: int, frame: FrameType | None) -> None:
    for sig in _TERMINATING:
        signal.signal(sig, signal.SIG_DFL)  # a second signal ends the process at once
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: stopping the djscale test clusters")


def stop_all() -> None:
    """Stop and delete every cluster this process booted (idempotent).

    First this process's background clients of those services: the replica probe thread
    and the cache invalidation listeners would report the stopped servers as lost.
    """
    if _owned and "djscale.db.pool" in sys.modules:
        sys.modules["djscale.db.pool"].reset_pools()
    if _owned and "djscale.cache.backend" in sys.modules:
        sys.modules["djscale.cache.backend"].reset_shared_state()
    while _owned:
        cluster = _owned.pop()
        with contextlib.suppress(Exception):
            cluster.down(purge=True)


def shared_cluster(topology: str | Path | Topology,
                   parts: Iterable[str] = DEFAULT_PARTS) -> LocalCluster:
    """The process tree's shared test cluster, booted on first use.

    When ``DJSCALE_STATE_DIR`` names a folder with a running cluster (this is a child
    process of the tests), that cluster is returned as it is and not owned here.
    """
    global _shared
    if _shared is not None:
        return _shared
    inherited = os.environ.get("DJSCALE_STATE_DIR")
    if inherited and ClusterState.read(Path(inherited)).services:
        # A process started by the cluster: its topology is the one that cluster runs.
        source = os.environ.get("DJSCALE_TOPOLOGY") or ClusterState.read(Path(inherited)).topology
        _shared = LocalCluster(load(source), inherited)
        return _shared
    topo = topology if isinstance(topology, Topology) else load(topology)
    state_dir = Path(tempfile.mkdtemp(prefix="djscale-test-"))
    cluster = _register(LocalCluster(topo, state_dir))
    os.environ["DJSCALE_STATE_DIR"] = str(state_dir)
    try:
        cluster.up(only=list(parts))
    except BaseException:
        stop_all()
        raise
    _shared = cluster
    return cluster


def write_topology(data: Mapping[str, Any], path: Path, *, base: Path) -> Topology:
    """Validate a topology mapping, write it as TOML to ``path`` and load it from there."""
    parse(data, source=str(path))  # fail before writing anything
    project = dict(data.get("project", {}))
    project["pythonpath"] = str((base / project.get("pythonpath", ".")).resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import tomli_w
    except ImportError as exc:  # imported here: the pytest plugin loads this module
        raise MissingDependency("tomli-w", extra="cluster",
                                feature="djscale.testing clusters") from exc
    path.write_text(tomli_w.dumps({**data, "project": project}), encoding="utf-8")
    return load(path)


class ClusterFactory:
    """Boot independent clusters from topology mappings; stop them all on :meth:`close`."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._own_base = base_dir is None  # a folder made here is removed by close()
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="djscale-clusters-"))
        self.clusters: list[LocalCluster] = []

    def __call__(self, topology: Mapping[str, Any] | Topology, *,
                 parts: Iterable[str] = FACTORY_PARTS, name: str = "",
                 source: str | Path | None = None) -> LocalCluster:
        """Boot ``topology`` (a mapping in the file's shape, or a Topology) and return it.

        A mapping is written to ``<state_dir>/djscale.toml`` (so processes of the cluster
        can read it); relative ``project.pythonpath`` starts at ``source``'s folder, or at
        the current folder.
        """
        state_dir = self.base_dir / (name or f"cluster{len(self.clusters) + 1}")
        if isinstance(topology, Topology):
            topo = topology
        else:
            topo = write_topology(topology, state_dir / "djscale.toml",
                                  base=Path(source).parent if source else Path.cwd())
        cluster = _register(LocalCluster(topo, state_dir))
        self.clusters.append(cluster)
        cluster.up(only=list(parts))
        return cluster

    def close(self) -> None:
        """Stop and delete every cluster booted by this factory (and its own folder)."""
        for cluster in reversed(self.clusters):
            with contextlib.suppress(Exception):
                cluster.down(purge=True)
            if cluster in _owned:
                _owned.remove(cluster)
        self.clusters.clear()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)
