"""Load-balancer configuration (nginx or HAProxy) generated from the topology.

Owns the text of ``nginx.conf`` / ``haproxy.cfg`` for a list of upstream app servers,
their validation (``nginx -t`` / ``haproxy -c``) and the process description. The same
generator serves the local cluster and the deployment files, so what is tested is what
is deployed.

Both configurations:
- balance with the topology's method (round robin, least connections, IP/source hash) and
  weights;
- retry a failed request on the next server only for idempotent methods (nginx's default
  for ``proxy_next_upstream``; HAProxy's ``retry-on`` is limited to safe methods);
- set ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``, a
  ``X-Request-ID`` when the client sent none, and ``X-Request-Start`` (when the proxy got
  the request, for :mod:`djscale.http.metrics`' queue-inclusive latency);
- keep connections to the upstreams alive;
- refuse ``/metrics`` (Prometheus scrapes each app server directly);
- eject failing servers: nginx passively (``max_fails``/``fail_timeout``), HAProxy actively
  (``option httpchk GET /health/ready``) with ``slowstart`` when a server comes back.

**nginx slots** (the local cluster, :func:`nginx_config` with ``slot_dir``): the upstream
is a fixed list of :data:`NGINX_SLOTS` Unix-socket *slots*, ``<slot_dir>/slot-NN.sock``,
each a symbolic link to the Unix socket of one app server (gunicorn listens on it besides
its TCP port); the servers share the slots in proportion to their weights, interleaved
(:func:`spread`). Changing which servers serve is re-pointing links (``rename``, atomic),
never a reload: nginx connects anew for each request (no upstream keep-alive, so no
cached connection pins a server) and the kernel resolves the link at ``connect``, so new
requests reach the new set at once while a server taken out finishes the connections it
has; when it has none left (:func:`unix_connections`), nothing can reach it any more.
nginx's own client connections are never touched: no reload closes idle keep-alive ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from djscale.cluster.supervisor import ManagedProcess, in_netns
from djscale.errors import ServiceStartError
from djscale.topology import LoadBalancerSpec

__all__ = ["NGINX_SLOTS", "Upstream", "haproxy_config", "lb_process",
           "nginx_config", "point_slots", "slot_path", "slot_targets", "spread",
           "unix_connections", "validate", "write_config"]

HEALTH_PATH = "/health/ready"

NGINX_SLOTS = 60
"""Slots of the generated nginx upstream (more with a larger autoscale max): 60 is shared
evenly by 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60 servers of equal weight, and by
7 to 9 within one slot."""

_NGINX_METHOD = {"round_robin": "", "least_conn": "least_conn;", "ip_hash": "ip_hash;"}
_HAPROXY_METHOD = {"round_robin": "roundrobin", "least_conn": "leastconn", "ip_hash": "source"}


@dataclass(frozen=True)
class Upstream:
    """One app server behind the load balancer."""

    name: str
    host: str
    port: int
    weight: int = 1
    down: bool = False
    """Taken out of rotation (draining, or a spare HAProxy slot): no new requests."""
    socket: str = ""
    """The Unix socket it listens on as well ('' = none): what nginx slots point to."""


def nginx_config(spec: LoadBalancerSpec, upstreams: Sequence[Upstream], *, listen_port: int,
                 run_dir: Path, log: Path, slot_dir: Path | None = None,
                 slots: int = NGINX_SLOTS) -> str:
    """Return a complete ``nginx.conf`` that runs in the foreground under ``run_dir``.

    ``slot_dir``: balance over ``slots`` Unix-socket slots there instead of ``upstreams``
    (see the module's doc): the config then never changes with the servers.
    """
    method = _NGINX_METHOD[spec.method]
    health = f"max_fails={spec.max_fails} fail_timeout={spec.fail_timeout}s"
    if slot_dir is not None:
        servers = "\n".join(f"        server unix:{slot_path(slot_dir, n)} {health};"
                             for n in range(1, slots + 1))
        # A new connection per request: a cached one would keep reaching the server a
        # slot pointed to when it was opened. (gunicorn's default sync workers close
        # every connection after the response anyway.)
        keepalive = ""
        # A server that died refuses through each of its slots until nginx has taken each
        # one out (max_fails): retry through as many slots as it takes (0: up to every
        # slot, within proxy_next_upstream_timeout). A refused connect is instant and sent
        # nothing; what a server got and failed on is retried only when idempotent, as ever.
        tries = 0
    else:
        # ip_hash does not support weights=0 / backup; weights are fine.
        servers = "\n".join(
            f"        server {u.host}:{u.port} weight={u.weight} {health}"
            f"{' down' if u.down else ''};"
            for u in upstreams
        )
        keepalive = "\n        keepalive 64;"
        tries = 3
    tmp = run_dir / "tmp"
    return f"""# generated by djscale from the topology; do not edit
daemon off;
master_process on;
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {log} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server_tokens off;

    # Keep a well-formed incoming X-Request-ID (same rule as Django's middleware),
    # otherwise make one.
    map $http_x_request_id $djscale_request_id {{
        "~^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{{0,127}}$" $http_x_request_id;
        default $request_id;
    }}

    upstream djscale_app {{
        {method}
{servers}{keepalive}
    }}

    server {{
        listen {spec.host}:{listen_port} backlog=4096;

        # Metrics are scraped from each app server, never through the public entry.
        location = /metrics {{
            return 404;
        }}

        location / {{
            proxy_pass http://djscale_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $djscale_request_id;
            # When this proxy got the request: the app's latency metric includes queueing.
            proxy_set_header X-Request-Start "t=${{msec}}";
            proxy_hide_header X-Request-ID;
            add_header X-Request-ID $djscale_request_id always;
            add_header X-Upstream $upstream_addr always;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
            # Non-idempotent requests (POST, ...) are never retried: nginx's default.
            # Not http_503: an app server answers 503 when a database it needs is down
            # (DatabaseUnavailableMiddleware); that is not this server's fault, and counting
            # it as a failure would eject every app server at once.
            proxy_next_upstream error timeout http_502 http_504;
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout 10s;
        }}
    }}
}}
"""


def haproxy_config(spec: LoadBalancerSpec, upstreams: Sequence[Upstream], *, listen_port: int,
                   run_dir: Path, slots: int = 0) -> str:
    """Return a complete ``haproxy.cfg`` with active health checks on the app servers.

    ``slots``: server lines to write in all (at least one per upstream); the spare ones are
    ``app-<n>`` placeholders in maintenance that :mod:`djscale.cluster.lbctl` fills and
    enables through the runtime API when the cluster grows, without a reload.
    """
    lines = [f"    server {u.name} {u.host}:{u.port} weight {u.weight} check"
             f"{' disabled' if u.down else ''}" for u in upstreams]
    taken = {u.name for u in upstreams}
    host = upstreams[0].host if upstreams else "127.0.0.1"
    n = 0
    while len(lines) < slots:
        n += 1
        if f"app-{n}" not in taken:
            # Port 1 is a placeholder: the runtime API sets the real address on enable.
            lines.append(f"    server app-{n} {host}:1 weight 1 check disabled")
    servers = "\n".join(lines)
    inter = spec.health_check_interval_ms
    checks = f"inter {inter}ms fastinter {max(100, inter // 2)}ms fall {spec.max_fails} rise 2"
    if spec.slowstart_seconds:
        checks += f" slowstart {spec.slowstart_seconds}s"
    return f"""# generated by djscale from the topology; do not edit
global
    maxconn 8192
    stats socket {run_dir}/haproxy.sock mode 600 level admin
    log stdout format raw local0 warning

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    option forwardfor
    option redispatch
    retries 2
    retry-on conn-failure empty-response 502 504
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    # A readiness probe may take its whole 1 s deadline and more on a busy machine:
    # without this, HAProxy gives a check only `inter` and takes healthy servers out.
    timeout check 3s

frontend djscale_front
    bind {spec.host}:{listen_port}
    unique-id-format %[uuid()]
    # Keep a well-formed incoming X-Request-ID (same rule as Django's middleware).
    acl djscale_rid_ok req.hdr(X-Request-ID) -m reg ^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{{0,127}}$
    http-request set-header X-Request-ID %[unique-id] unless djscale_rid_ok
    http-request set-var(txn.request_id) req.hdr(X-Request-ID)
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(Host)]
    # When this proxy got the request: the app's latency metric includes queueing.
    http-request set-header X-Request-Start t=%[date(0,us)]
    # Retry only safe methods on another server; never replay a POST.
    http-request disable-l7-retry unless METH_GET or METH_HEAD or METH_OPTIONS
    http-response set-header X-Upstream %[srv_name]
    # On every answer, HAProxy's own too (a 503 when no server is up): the id the
    # client reports is the one in the logs.
    http-after-response set-header X-Request-ID %[var(txn.request_id)]
    # Metrics are scraped from each app server, never through the public entry.
    http-request deny deny_status 404 if {{ path /metrics }}
    default_backend djscale_app

backend djscale_app
    balance {_HAPROXY_METHOD[spec.method]}
    option httpchk GET {HEALTH_PATH} HTTP/1.1
    # A Host header so the probe passes ALLOWED_HOSTS even without djscale's
    # HealthCheckMiddleware (which answers before any host check).
    http-check send hdr Host localhost
    http-check expect status 200
    default-server {checks}
{servers}
"""


def validate(kind: str, config: Path, run_dir: Path, *, netns: str = "") -> None:
    """Check a generated config with ``nginx -t`` / ``haproxy -c``; raise ServiceStartError.

    ``nginx -t`` binds the listen address: with ``netns`` it runs in the namespace that
    owns that address.
    """
    if kind == "nginx":
        cmd = ["nginx", "-t", "-q", "-p", str(run_dir), "-c", str(config)]
    else:
        cmd = ["haproxy", "-c", "-q", "-f", str(config)]
    if netns:
        cmd = [*in_netns(netns), *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise ServiceStartError("lb", f"{kind} is not installed (run `make setup`)") from None
    if proc.returncode != 0:
        raise ServiceStartError("lb", f"`{' '.join(cmd)}` rejected the generated config",
                                (proc.stdout + proc.stderr).strip())


def write_config(spec: LoadBalancerSpec, upstreams: Sequence[Upstream], *, port: int,
                 run_dir: Path, log: Path, slots: int = 0, netns: str = "",
                 slot_dir: Path | None = None) -> Path:
    """Write the load balancer's config for ``upstreams`` and validate it; return its path.

    ``slot_dir`` (nginx only): the config balances over ``slots`` Unix-socket slots there.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "nginx":
        config = run_dir / "nginx.conf"
        text = nginx_config(spec, upstreams, listen_port=port, run_dir=run_dir, log=log,
                            slot_dir=slot_dir, slots=max(slots, NGINX_SLOTS))
    else:
        config = run_dir / "haproxy.cfg"
        text = haproxy_config(spec, upstreams, listen_port=port, run_dir=run_dir, slots=slots)
    # Validated as a new file first: a running load balancer's config is replaced only
    # by one its binary accepts.
    candidate = config.with_name(f"candidate-{config.name}")
    candidate.write_text(text)
    validate(spec.kind, candidate, run_dir, netns=netns)
    candidate.replace(config)
    return config


def lb_process(spec: LoadBalancerSpec, upstreams: Sequence[Upstream], *, port: int,
               run_dir: Path, log: Path, netns: str = "", slots: int = 0,
               slot_dir: Path | None = None) -> ManagedProcess:
    """Write and validate the config, and describe the load-balancer process.

    ``slot_dir`` (nginx only): balance over Unix-socket slots there, pointed at the
    ``upstreams`` now (see the module's doc); otherwise over their TCP addresses.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    extra: dict[str, object] = {}
    if spec.kind == "nginx" and slot_dir is not None:
        slots = max(slots, NGINX_SLOTS)
        try:
            point_slots(slot_dir, slots, upstreams)
        except ValueError as exc:
            raise ServiceStartError("lb", str(exc)) from None
        extra = {"slot_dir": str(slot_dir), "slots": slots}
    else:
        slot_dir = None
    config = write_config(spec, upstreams, port=port, run_dir=run_dir, log=log, slots=slots,
                          netns=netns, slot_dir=slot_dir)
    if spec.kind == "nginx":
        cmd = ["nginx", "-p", str(run_dir), "-c", str(config)]
        stop = signal.SIGQUIT  # graceful: finish in-flight requests
    else:
        cmd = ["haproxy", "-db", "-f", str(config)]
        stop = signal.SIGUSR1  # soft stop
    return ManagedProcess(name="lb", kind=spec.kind, role="lb", host=spec.host, port=port,
                          cmd=cmd, log=str(log), stop_signal=stop, netns=netns,
                          extra={"config": str(config), "method": spec.method, **extra})


# ---------------------------------------------------------------------- nginx slots

def slot_path(slot_dir: Path, number: int) -> Path:
    """The link of slot ``number`` (1-based) under ``slot_dir``."""
    return slot_dir / f"slot-{number:02d}.sock"


def refused_path(slot_dir: Path) -> Path:
    """A socket file nobody listens on: a slot pointing there refuses at once."""
    path = slot_dir / "refused.sock"
    if not path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))  # bound, never listening, closed: connect gets ECONNREFUSED
        os.chmod(path, 0o777)  # nginx's workers may run as another user
    return path


def spread(upstreams: Sequence[Upstream], slots: int) -> list[str]:
    """The socket each of ``slots`` slots points to: the live servers by weight, interleaved.

    Smooth weighted round robin (nginx's own) over the upstreams not ``down``, so that
    consecutive slots, which nginx's round robin visits in turn, belong to different
    servers. Empty when no upstream is live.
    """
    live = [u for u in upstreams if not u.down]
    if not live:
        return []
    if len(live) > slots:
        raise ValueError(f"{len(live)} app servers do not fit into {slots} load-balancer slots")
    current = [0] * len(live)
    total = sum(max(u.weight, 1) for u in live)
    picks = []
    for _ in range(slots):
        for i, u in enumerate(live):
            current[i] += max(u.weight, 1)
        best = max(range(len(live)), key=lambda i: current[i])
        current[best] -= total
        picks.append(live[best].socket)
    # Every live server gets at least one slot, whatever its weight.
    for u in live:
        if u.socket not in picks:
            counts = {s: picks.count(s) for s in picks}
            donor = max(counts, key=lambda s: counts[s])
            picks[picks.index(donor)] = u.socket
    return picks


def slot_targets(slot_dir: Path, slots: int) -> list[str]:
    """What each slot points to now ('' for a missing link)."""
    targets = []
    for n in range(1, slots + 1):
        try:
            targets.append(os.readlink(slot_path(slot_dir, n)))
        except OSError:
            targets.append("")
    return targets


def point_slots(slot_dir: Path, slots: int, upstreams: Sequence[Upstream]) -> set[str]:
    """Point the slots at the live ``upstreams`` (:func:`spread`); return the sockets left.

    Each link is replaced atomically (a new link renamed over it). The sockets returned
    were pointed to before and are not now: the caller waits until they are idle.
    Raises ValueError when a live upstream has no Unix socket.
    """
    slot_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    missing = [u.name for u in upstreams if not u.down and not u.socket]
    if missing:
        raise ValueError(f"{', '.join(missing)} listen(s) on no Unix socket (started before "
                         "nginx slots existed?): restart it with `djscale cluster rollout`")
    before = slot_targets(slot_dir, slots)
    wanted = spread(upstreams, slots) or [str(refused_path(slot_dir))] * slots
    for n, target in enumerate(wanted, start=1):
        if before[n - 1] == target:
            continue
        link = slot_path(slot_dir, n)
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return {t for t in before if t} - set(wanted)


def unix_connections(path: str) -> int:
    """Connections to the Unix socket bound at ``path``: accepted or still queued.

    Read from ``/proc/net/unix``, where an accepted connection and one waiting in the
    listen queue carry the path of the listener they came through; the listening socket
    itself (flag ``__SO_ACCEPTCON``) is not counted.
    """
    count = 0
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and not int(fields[3], 16) & 0x10000:
                    count += 1
    except OSError:
        return 0
    return count
