"""A topology spread over network namespaces to run commands against (``python -m ...netlab``).

The network chaos scenarios (``djscale chaos partition`` / ``delay``) act between the
``[hosts]`` of a topology that run in network namespaces. This runner builds those hosts
on one machine (:class:`~djscale.testing.netns.HostNetwork`), places a topology's services
on them, boots the cluster, runs the given shell commands one after the other (``{topology}``
and ``{state}`` in them are replaced by the topology file and state folder it wrote), and
removes everything afterwards, also on an error or Ctrl-C::

    python -m djscale.testing.netlab -t examples/demo/djscale.toml \\
        --run 'djscale chaos partition app1,app2 db-replica1 --seconds 60 \\
               -t {topology} --state-dir {state}'

Placement (the demo's shape): the primary on ``db``, replica *i* on ``db-replica<i>``,
Redis (cache, sessions, broker) on ``cache``, app server *i* on ``app<i>``, the Celery
workers and the outbox relay on ``worker``, the load balancer on ``lb``. Root only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from djscale.cluster import LocalCluster
from djscale.errors import DjscaleError
from djscale.testing import write_topology
from djscale.testing.netns import HostNetwork

__all__ = ["main", "place"]


def place(data: dict[str, Any], hosts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The topology ``data`` with its services placed on the lab's hosts (see above)."""
    out = {**data, "hosts": hosts}
    pg = dict(out.get("postgres", {}))
    replicas = int(pg.get("replicas", 0))
    pg.update(host="db", replica_hosts=[f"db-replica{i + 1}" for i in range(replicas)])
    out["postgres"] = pg
    out["redis"] = {**out.get("redis", {}), "host": "cache"}
    app = dict(out.get("app", {}))
    app["hosts"] = [f"app{i + 1}" for i in range(int(app.get("servers", 2)))]
    out["app"] = app
    out["lb"] = {**out.get("lb", {}), "host": "lb"}
    celery = dict(out.get("celery", {}))
    if int(celery.get("workers", 0)):
        celery["hosts"] = ["worker"] * int(celery["workers"])
        out["celery"] = celery
    return out


def _host_names(data: dict[str, Any]) -> list[str]:
    replicas = int(data.get("postgres", {}).get("replicas", 0))
    servers = int(data.get("app", {}).get("servers", 2))
    return ["db", *(f"db-replica{i + 1}" for i in range(replicas)), "cache",
            *(f"app{i + 1}" for i in range(servers)), "worker", "lb"]


def main(argv: Sequence[str] | None = None) -> int:
    """Build the hosts, boot the cluster, run the commands, remove everything."""
    parser = argparse.ArgumentParser(prog="python -m djscale.testing.netlab",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", "-t", default="djscale.toml")
    parser.add_argument("--only", default="postgres,redis,migrate,app,lb,celery,watchdog",
                        help="parts to boot (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=TOML",
                        help="override a topology key, e.g. postgres.query_deadline_ms=500")
    parser.add_argument("--run", action="append", default=[], metavar="COMMAND",
                        help="shell command to run against the cluster (repeatable)")
    args = parser.parse_args(argv)
    source = Path(args.topology)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"netlab: error: {source}: {exc}", file=sys.stderr)
        return 2
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    failed = 0
    state = Path(tempfile.mkdtemp(prefix="djscale-netlab-"))
    try:
        with HostNetwork(_host_names(data)) as net:
            topology = write_topology(place(data, net.hosts_table()), state / "djscale.toml",
                                      base=source.resolve().parent)
            cluster = LocalCluster(topology, state)
            try:
                cluster.up(only=[p for p in args.only.split(",") if p])
                for command in args.run:
                    line = command.replace("{topology}", str(state / "djscale.toml")).replace(
                        "{state}", str(state))
                    print(f"$ {line}", flush=True)
                    code = subprocess.run(line, shell=True, check=False).returncode
                    print(f"(exit status {code})", flush=True)
                    failed += code != 0
            finally:
                cluster.down(purge=True)
    except DjscaleError as exc:
        print(f"netlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netlab: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
