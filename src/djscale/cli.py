"""The ``djscale`` command line.

::

    djscale --version
    djscale cluster up     [--topology FILE] [--state-dir DIR] [--only PART,...]
    djscale cluster status [--topology FILE] [--state-dir DIR]
    djscale cluster logs   [--topology FILE] [--state-dir DIR] [SERVICE] [-n LINES]
    djscale cluster down   [--topology FILE] [--state-dir DIR] [--purge]
    djscale cluster rollout [--parts app,celery,gateway] [--ready-timeout S]
    djscale cluster scale  app=N celery=M
    djscale cluster autoscale [--seconds S] [--trace FILE]
    djscale chaos SCENARIO [--topology FILE] [--read-path P] [--write-path P] [--json]
                  [--event-topic T --event-consumer C [--effect-sql SQL]]
    djscale chaos freeze SERVICE [--seconds N] [--fault-after N] [--requests N]
    djscale chaos partition A B [--seconds N]         (hosts in network namespaces)
    djscale chaos delay HOST MS [JITTER] [LOSS%] [--seconds N]
    djscale doctor [--settings MODULE] [--no-deploy]
    djscale init [--settings MODULE] [--output FILE] [--force]
    djscale topology check [FILE | --topology FILE]
    djscale deploy kubernetes [--topology FILE] [--out DIR]

Errors djscale knows about (a bad topology file, a service that failed to start) are
printed as ``djscale: error: ...`` with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from djscale.errors import ConfigurationError, DjscaleError

__all__ = ["main"]


def _version() -> str:
    """The installed distribution's version, or the source tree's when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("djscale")
    except PackageNotFoundError:
        from djscale import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="djscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"djscale {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="run the topology as a local cluster")
    csub = cluster.add_subparsers(dest="action", required=True)
    for action, text in (("up", "start every service and wait until it is ready"),
                         ("down", "stop every service"),
                         ("status", "show each service's pid, address and health"),
                         ("logs", "show the end of the services' logs")):
        p = csub.add_parser(action, help=text)
        p.add_argument("--topology", "-t", default="djscale.toml",
                       help="topology file (default: ./djscale.toml)")
        p.add_argument("--state-dir", default=None,
                       help="state folder (default: $DJSCALE_STATE_DIR or ./.djscale)")
        if action == "up":
            p.add_argument("--only", default="",
                           help="comma-separated parts: postgres,redis,migrate,app,lb,celery,"
                                "dashboard")
        if action == "down":
            p.add_argument("--purge", action="store_true", help="also delete all data")
        if action == "logs":
            p.add_argument("service", nargs="?", default="", help="one service (default: all)")
            p.add_argument("-n", "--lines", type=int, default=20)

    _live_parsers(csub)

    chaos = sub.add_parser("chaos", help="break one component of a running cluster under load")
    chaos.add_argument("scenario", help="kill-app-server, kill-replica, pause-replication, "
                                        "stop-redis, restart-primary, stop-broker, kill-worker, "
                                        "freeze, partition, delay, kill-primary, "
                                        "kill-primary-node, switchover, isolate-primary")
    chaos.add_argument("target", nargs="?", default="",
                       help="the service a targeted scenario acts on (freeze SERVICE, e.g. "
                            "pg-default-replica1; see `djscale cluster status`), or the first "
                            "side of a partition / the host to delay, or the replication group "
                            "of kill-primary, kill-primary-node, switchover, isolate-primary "
                            "(default: default; "
                            "a shard's name, e.g. shard1)")
    chaos.add_argument("more", nargs="*", default=[],
                       help="partition: the other side (hosts or services, comma-separated); "
                            "delay: MS [JITTER] [LOSS%%]")
    chaos.add_argument("--topology", "-t", default="djscale.toml")
    chaos.add_argument("--state-dir", default=None)
    chaos.add_argument("--read-path", default="/whoami", help="GET path of the load")
    chaos.add_argument("--write-path", default="", help="POST path of the load (optional)")
    chaos.add_argument("--count-sql", default="",
                       help="SQL counting the rows the writes add (for reconciliation)")
    chaos.add_argument("--requests", type=int, default=0,
                       help="upper bound of requests (default 20000; failover scenarios: "
                            "until healed)")
    chaos.add_argument("--repeat", type=int, default=1,
                       help="run the scenario this many times in a row (e.g. 20 failovers)")
    chaos.add_argument("--concurrency", "-c", type=int, default=8,
                       help="client connections of the load (default 8)")
    chaos.add_argument("--fault-seconds", "--seconds", type=float, default=3.0,
                       help="how long the fault lasts (default 3)")
    chaos.add_argument("--fault-after", type=float, default=1.5,
                       help="seconds of load before the fault (the 'before' measurements)")
    chaos.add_argument("--write-every", type=int, default=4,
                       help="every Nth request is a write (default 4)")
    chaos.add_argument("--event-topic", default="",
                       help="topic of the event each write publishes (stop-broker, kill-worker)")
    chaos.add_argument("--event-consumer", default="",
                       help="consumer (inbox name) that must process each event once")
    chaos.add_argument("--effect-sql", default="",
                       help="SQL selecting event_id of each effect row: duplicates check")
    chaos.add_argument("--drain-seconds", type=float, default=45.0,
                       help="how long to wait for every event to be consumed (the relay "
                            "sends again what the broker lost after 10 s)")
    chaos.add_argument("--probe-seconds", type=float, default=1.0,
                       help="the app's replica probe interval (REPLICA_REFRESH_SECONDS): a "
                            "replica cut off or slowed must leave reads within two of them")
    chaos.add_argument("--read-tag", default="read_db",
                       help="JSON key of a read's answer to count reads by (default read_db: "
                            "the database that served it)")
    chaos.add_argument("--verify-path", default="",
                       help="GET path checked after the load: each answer must say "
                            "\"stale\": false")
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")

    deploy = sub.add_parser("deploy", help="render the topology for a deployment target")
    dsub = deploy.add_subparsers(dest="action", required=True)
    kube = dsub.add_parser("kubernetes", help="write Kubernetes manifests for the topology")
    kube.add_argument("--topology", "-t", default="djscale.toml",
                      help="topology file (default: ./djscale.toml)")
    kube.add_argument("--out", "-o", default="deploy/kubernetes",
                      help="folder to write the manifests to (default: deploy/kubernetes)")

    init = sub.add_parser("init", help="write a starting djscale.toml for the Django project "
                                       "in this folder and print the settings lines to add")
    init.add_argument("--settings", default="",
                      help="settings module (default: $DJANGO_SETTINGS_MODULE or manage.py's)")
    init.add_argument("--output", "-o", default="",
                      help="file to write (default: djscale.toml next to manage.py)")
    init.add_argument("--force", action="store_true", help="overwrite a different djscale.toml")

    doctor = sub.add_parser("doctor", help="run the scalability checklist (djscale's Django "
                                           "system checks) against a settings module")
    doctor.add_argument("--settings", default="",
                        help="Django settings module (default: $DJANGO_SETTINGS_MODULE)")
    doctor.add_argument("--no-deploy", action="store_true",
                        help="skip the checks that only apply to deployments")

    topo = sub.add_parser("topology", help="work with topology files")
    tsub = topo.add_subparsers(dest="action", required=True)
    check = tsub.add_parser("check", help="validate a topology file")
    check.add_argument("file", nargs="?", default=None,
                       help="topology file (default: ./djscale.toml)")
    check.add_argument("--topology", "-t", dest="topology", default=None,
                       help="the same, spelled as for the other commands")
    return parser


def _live_parsers(csub: Any) -> None:
    """``cluster rollout|scale|autoscale``: change a running cluster (djscale.cluster.scale)."""
    roll = csub.add_parser("rollout", help="replace app servers, Celery workers and the "
                                           "gateway one at a time with the topology's "
                                           "current version, without dropping a request")
    roll.add_argument("--parts", default="app,celery,gateway",
                      help="comma-separated: app,celery,gateway (default: all)")
    roll.add_argument("--ready-timeout", type=float, default=60.0,
                      help="seconds a new process has to become ready before the rollout "
                           "rolls back (default 60)")
    scale = csub.add_parser("scale", help="change the number of app servers / Celery "
                                          "workers of a running cluster: app=N celery=M")
    scale.add_argument("counts", nargs="*", help="app=N and/or celery=M")
    auto = csub.add_parser("autoscale", help="run the autoscaler of [app] autoscale in the "
                                             "foreground (Ctrl-C stops it)")
    auto.add_argument("--seconds", type=float, default=0.0,
                      help="stop after this many seconds (default: run until interrupted)")
    auto.add_argument("--trace", default="", help="write every measurement as JSON lines here")
    for p in (roll, scale, auto):
        p.add_argument("--topology", "-t", default="djscale.toml",
                       help="topology file (default: ./djscale.toml)")
        p.add_argument("--state-dir", default=None,
                       help="state folder (default: $DJSCALE_STATE_DIR or ./.djscale)")


def _live(cluster: object, args: argparse.Namespace) -> int:
    from djscale.cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    if args.action == "rollout":
        from djscale.cluster.rollout import rollout

        report = rollout(cluster, parts=[p for p in args.parts.split(",") if p],
                         ready_timeout=args.ready_timeout, log=lambda line: print(line,
                                                                                  flush=True))
        print(f"rollout done: {len(report.replaced)} services replaced")
        return 0
    if args.action == "scale":
        from djscale.cluster.scale import parse_scale_args, scale

        done = scale(cluster, parse_scale_args(args.counts))
        print(f"{len(cluster.app_servers())} app servers" + ("" if done else " (no change)"))
        return 0
    from djscale.cluster.autoscale import run_autoscaler

    return run_autoscaler(cluster, seconds=args.seconds, trace=args.trace)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DjscaleError as exc:
        # One line for the problem; a service that failed to start adds its log's tail.
        print(f"djscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("djscale: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from djscale.topology import load

    if args.command == "doctor":
        return _doctor(args)

    if args.command == "init":
        from djscale.adopt import init

        return init(".", settings=args.settings, output=args.output, force=args.force)

    if args.command == "topology":
        if args.file and args.topology and args.file != args.topology:
            raise ConfigurationError(f"two topology files given ({args.file}, "
                                     f"{args.topology}); name one")
        args.file = args.file or args.topology or "djscale.toml"
        topology = load(args.file)
        groups = ", ".join(f"{g.name} (+{g.replicas} replicas)" for g in topology.database_groups)
        print(f"{args.file}: ok: databases {groups}; redis {topology.redis.mode}; "
              f"{topology.app.servers} app servers behind {topology.lb.kind} "
              f"({topology.lb.method}); {topology.celery.workers} celery workers")
        return 0

    if args.command == "deploy":
        return _deploy(args)

    from djscale.cluster import LocalCluster
    from djscale.cluster.state import default_state_dir

    topology = load(args.topology)
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    cluster = LocalCluster(topology, state_dir)

    if args.command == "chaos":
        return _chaos(cluster, args)

    if args.action in ("rollout", "scale", "autoscale"):
        return _live(cluster, args)
    if args.action == "up":
        from djscale.cluster import PARTS
        only = [p for p in args.only.split(",") if p] or list(PARTS)
        cluster.up(only=only)
        _print_status(cluster)
        if "lb" in only:
            host, port = cluster.address("lb")
            print(f"\nload balancer: http://{host}:{port}/")
        if "dashboard" in only:
            host, port = cluster.address("dashboard")
            print(f"dashboard:     http://{host}:{port}/")
        return 0
    if args.action == "status":
        if not cluster.state.services:
            print(f"no cluster recorded in {state_dir}")
            return 1
        healthy = _print_status(cluster)
        return 0 if healthy else 1
    if args.action == "logs":
        from djscale.cluster.supervisor import tail
        for proc in cluster.processes():
            if args.service and proc.name != args.service:
                continue
            print(f"==> {proc.name} ({proc.log}) <==")
            print(tail(proc.log, args.lines))
        return 0
    if args.action == "down":
        cluster.down(purge=args.purge)
        print(f"cluster in {state_dir} stopped" + (" and purged" if args.purge else ""))
        return 0
    raise AssertionError(args.action)


def _doctor(args: argparse.Namespace) -> int:
    import os

    from djscale.errors import ConfigurationError

    if args.settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError("no settings module: pass --settings or set "
                                 "DJANGO_SETTINGS_MODULE")
    import sys

    import django
    from django.core.checks import ERROR

    sys.path.insert(0, os.getcwd())  # like manage.py: the project is the current folder
    try:
        django.setup()
    except ImportError as exc:
        raise ConfigurationError(f"cannot import the settings: {exc}") from None
    from djscale.checks import doctor

    messages = doctor(deploy=not args.no_deploy)
    for message in messages:
        hint = f"\n    hint: {message.hint}" if message.hint else ""
        print(f"{message.id}: {message.msg}{hint}")
    errors = [m for m in messages if m.level >= ERROR]
    print(f"{len(messages)} finding(s), {len(errors)} error(s)" if messages
          else "no findings: the scalability checklist passes")
    return 1 if errors else 0


def _chaos(cluster: object, args: argparse.Namespace) -> int:
    import json

    from djscale.chaos import ChaosOptions, run_scenario
    from djscale.chaos.network import terminate_as_interrupt
    from djscale.chaos.scenarios import FAILOVER
    from djscale.cluster import LocalCluster
    from djscale.errors import ClusterError

    assert isinstance(cluster, LocalCluster)
    if not cluster.state.services or "lb" not in cluster.state.services:
        raise ClusterError("no running cluster with a load balancer here; "
                           "start it with `djscale cluster up` first")
    if args.concurrency < 1:
        raise ClusterError("--concurrency must be 1 or more")
    if args.write_every < 1:
        raise ClusterError("--write-every must be 1 or more")
    if args.repeat < 1:
        raise ClusterError("--repeat must be 1 or more")
    failover = args.scenario in FAILOVER
    # A failover lasts as long as Patroni takes (ttl): the load runs until it is healed.
    bound = max(60.0, args.fault_after + args.fault_seconds + 30) + (
        cluster.topology.postgres.ha_ttl + 150 if failover else 0)
    options = ChaosOptions(read_path=args.read_path, write_path=args.write_path,
                           count_sql=args.count_sql,
                           requests=args.requests or (10**7 if failover else 20000),
                           concurrency=args.concurrency,
                           fault_seconds=args.fault_seconds, write_every=args.write_every,
                           event_topic=args.event_topic, event_consumer=args.event_consumer,
                           effect_sql=args.effect_sql, drain_seconds=args.drain_seconds,
                           target=args.target, target_args=tuple(args.more),
                           probe_seconds=args.probe_seconds, fault_after=args.fault_after,
                           read_tag=args.read_tag, verify_path=args.verify_path,
                           max_seconds=bound)
    if args.more and args.scenario not in ("partition", "delay"):
        raise ClusterError(f"unexpected arguments for {args.scenario}: {' '.join(args.more)}")
    reports = []
    for run in range(1, args.repeat + 1):
        with terminate_as_interrupt():  # SIGTERM, like Ctrl-C, undoes the fault before exiting
            report = run_scenario(cluster, args.scenario, options)
        reports.append(report)
        if args.repeat > 1 and not args.json:
            print(f"--- run {run} of {args.repeat}")
        print(json.dumps(report.as_dict(), indent=2) if args.json else report.text(),
              flush=True)
    if args.repeat > 1 and not args.json:
        print(_repeat_summary(reports))
    return 0 if all(r.passed for r in reports) else 1


def _repeat_summary(reports: list[Any]) -> str:
    """One line over repeated runs of a scenario: passes, losses, slowest recovery."""
    firsts = [r.first_write_seconds for r in reports if r.first_write_seconds is not None]
    lost = sum(r.lost or 0 for r in reports)
    acked = sum(r.writes_ok for r in reports)
    rows = sum(r.rows_added or 0 for r in reports)
    leaders = len({r.leader_after for r in reports if r.leader_after})
    return (f"summary    {sum(r.passed for r in reports)} of {len(reports)} runs passed; "
            f"{sum(r.requests for r in reports)} requests, failed reads "
            f"{sum(r.reads_failed for r in reports)}, failed writes "
            f"{sum(r.writes_failed for r in reports)}; {acked} writes acknowledged, "
            f"{rows} rows added, lost {lost}; first write after the fault "
            f"{min(firsts, default=0):.2f}-{max(firsts, default=0):.2f} s; "
            f"{leaders} distinct new leaders")


def _deploy(args: argparse.Namespace) -> int:
    from djscale.deploy import write_kubernetes
    from djscale.errors import TopologyError
    from djscale.topology import load

    topology = load(args.topology)
    try:
        text = Path(args.topology).read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{args.topology}: cannot read topology file: {exc}") from None
    written = write_kubernetes(topology, topology_text=text, out_dir=args.out)
    for path in written:
        print(path)
    print(f"\n{len(written)} files for namespace {topology.kubernetes.namespace!r}; apply with "
          f"`kubectl apply -k {args.out}` once the CloudNativePG operator (and the Prometheus "
          f"operator, for the ServiceMonitor) are installed and the secrets "
          f"{topology.kubernetes.db_secret!r} and {topology.kubernetes.app_secret!r} exist")
    return 0


def _print_status(cluster: object) -> bool:
    from djscale.cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    rows = cluster.status()
    header = ("SERVICE", "KIND", "PID", "ADDRESS", "HEALTHY", "RESTARTS", "DETAIL")
    # The watchdog's view wins when it explains a down service (backoff, crash-loop).
    table = [header] + [
        (r.name, r.kind, str(r.pid or "-"), r.address,
         "yes" if r.healthy else (r.supervision if r.supervision in ("backoff", "starting",
                                                                       "crash-loop")
                                  else "no" if r.running else "stopped"),
         str(r.restarts) if r.supervision else "-",
         "; ".join(filter(None, [r.detail, f"last exit: {r.last_exit}" if r.last_exit
                                 else ""])))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return all(r.healthy for r in rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
