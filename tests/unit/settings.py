"""Settings of the unit tests: the integration settings' shape, with nothing running.

The databases, replicas, shards and Redis of ``tests/topology.toml`` get fixed ports
that no server listens on (above the kernel's ephemeral range and djscale's port
allocator, so no test cluster takes them either): settings, routers, checks and
middleware see the same configuration as in the integration tests, and a test that
opens a connection fails at once instead of quietly needing a service.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from djscale.settings import from_topology
from djscale.topology import parse
from tests.base_settings import *  # noqa: F403

TOPOLOGY = Path(__file__).resolve().parent.parent / "topology.toml"
NO_SERVER_PORT = 65400
"""First of the ports nobody listens on (one per service, counting up)."""


def _without_servers(source: Path) -> dict[str, object]:
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    ports = iter(range(NO_SERVER_PORT, 65536))
    postgres = data["postgres"]
    postgres["port"] = next(ports)
    postgres["replica_ports"] = [next(ports) for _ in range(postgres.get("replicas", 0))]
    for shard in data.get("shards", []):
        shard["port"] = next(ports)
        shard["replica_ports"] = [next(ports) for _ in range(shard.get("replicas", 0))]
    data["redis"]["port"] = next(ports)
    data["project"]["pythonpath"] = str(source.parent.parent)
    return data


globals().update(from_topology(parse(_without_servers(TOPOLOGY), source=str(TOPOLOGY))))
