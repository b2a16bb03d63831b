"""Which Python packages each part of the local cluster runs, checked before anything starts.

The local cluster starts its app servers, Celery workers and gateway as ``python -m
gunicorn``, ``-m celery`` and ``-m djscale.gateway_server`` (uvicorn) in this interpreter.
Those packages come with djscale's extras, not with a core ``pip install djscale``;
without this check a missing one would show up as a service that failed to start, after
the databases were booted. This module only looks packages up
(:func:`importlib.util.find_spec`); it imports none of them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from djscale.errors import MissingDependency
from djscale.topology import Topology

__all__ = ["require_packages"]


def _needed(topology: Topology, parts: set[str]) -> Iterable[tuple[str, str, str, str]]:
    """(module, distribution, extra, feature) for each package the parts will run."""
    if "app" in parts and topology.app.servers:
        yield "gunicorn", "gunicorn", "cluster", "the local cluster (app servers)"
    celery = topology.celery
    if "celery" in parts and (celery.workers or celery.relay):
        yield "celery", "celery", "events", "the local cluster (Celery workers, relay)"
    gateway = topology.gateway
    if "gateway" in parts and (gateway.routes or gateway.compositions):
        yield "uvicorn", "uvicorn", "gateway", "the local cluster (API gateway)"
        yield "aiohttp", "aiohttp", "gateway", "the local cluster (API gateway)"


def require_packages(topology: Topology, parts: Iterable[str]) -> None:
    """Raise :class:`~djscale.errors.MissingDependency` for the first package ``parts`` lack."""
    for module, distribution, extra, feature in _needed(topology, set(parts)):
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(distribution, extra=extra, feature=feature)
