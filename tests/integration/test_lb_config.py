"""Load-balancer configs from the topology, validated by the real nginx -t / haproxy -c."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest

from djscale.cluster.lb import (
    NGINX_SLOTS,
    Upstream,
    haproxy_config,
    nginx_config,
    point_slots,
    slot_path,
    slot_targets,
    spread,
    unix_connections,
    validate,
)
from djscale.topology import LoadBalancerSpec

UPSTREAMS = [Upstream("app-1", "127.0.0.1", 18001, weight=3),
             Upstream("app-2", "127.0.0.1", 18002, weight=1)]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
@pytest.mark.parametrize(("method", "directive"), [
    ("round_robin", None), ("least_conn", "least_conn;"), ("ip_hash", "ip_hash;")])
def test_nginx_config_is_valid_for_every_method(tmp_path: Path, method: str,
                                                directive: str | None) -> None:
    spec = LoadBalancerSpec(kind="nginx", method=method, max_fails=3, fail_timeout=7)
    text = nginx_config(spec, UPSTREAMS, listen_port=18000, run_dir=tmp_path,
                        log=tmp_path / "lb.log")
    validate("nginx", _write(tmp_path, "nginx.conf", text), tmp_path)
    if directive:
        assert directive in text
    assert "server 127.0.0.1:18001 weight=3 max_fails=3 fail_timeout=7s;" in text
    assert "keepalive 64;" in text
    assert "proxy_next_upstream error timeout" in text
    assert "non_idempotent" not in text  # POSTs are never retried on another server
    assert "location = /metrics" in text
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                   "X-Request-ID"):
        assert f"proxy_set_header {header}" in text


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
@pytest.mark.parametrize(("method", "balance"), [
    ("round_robin", "roundrobin"), ("least_conn", "leastconn"), ("ip_hash", "source")])
def test_haproxy_config_is_valid_for_every_method(tmp_path: Path, method: str,
                                                  balance: str) -> None:
    spec = LoadBalancerSpec(kind="haproxy", method=method, slowstart_seconds=9)
    text = haproxy_config(spec, UPSTREAMS, listen_port=18000, run_dir=tmp_path)
    validate("haproxy", _write(tmp_path, "haproxy.cfg", text), tmp_path)
    assert f"balance {balance}" in text
    assert "option httpchk GET /health/ready" in text
    assert "slowstart 9s" in text
    assert "server app-1 127.0.0.1:18001 weight 3 check" in text
    assert "option forwardfor" in text
    assert "disable-l7-retry unless METH_GET or METH_HEAD" in text
    assert "deny deny_status 404 if { path /metrics }" in text


def test_a_broken_config_is_reported_with_the_tool_output(tmp_path: Path) -> None:
    from djscale.errors import ServiceStartError

    bad = _write(tmp_path, "haproxy.cfg", "frontend x\n    bind :notaport\n")
    with pytest.raises(ServiceStartError, match="rejected the generated config"):
        validate("haproxy", bad, tmp_path)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_nginx_slots_config_lists_fixed_unix_slots_without_upstream_keepalive(
        tmp_path: Path) -> None:
    spec = LoadBalancerSpec(kind="nginx", max_fails=3, fail_timeout=7)
    slots = tmp_path / "slots"
    text = nginx_config(spec, UPSTREAMS, listen_port=18000, run_dir=tmp_path,
                        log=tmp_path / "lb.log", slot_dir=slots)
    validate("nginx", _write(tmp_path, "nginx.conf", text), tmp_path)
    assert text.count("server unix:") == NGINX_SLOTS
    assert f"server unix:{slots}/slot-01.sock max_fails=3 fail_timeout=7s;" in text
    assert "127.0.0.1:18001" not in text  # the servers are in the links, not the config
    assert "keepalive 64;" not in text  # a cached connection would pin a slot's old server


@pytest.mark.parametrize(("weights", "expected"), [
    ((1,), {"a": 60}), ((1, 1), {"a": 30, "b": 30}), ((1, 1, 1), {"a": 20, "b": 20, "c": 20}),
    ((1, 1, 1, 1), {"a": 15, "b": 15, "c": 15, "d": 15}), ((3, 1), {"a": 45, "b": 15})])
def test_spread_shares_the_slots_by_weight_interleaved(weights: tuple[int, ...],
                                                       expected: dict[str, int]) -> None:
    ups = [Upstream(f"app-{i}", "127.0.0.1", 1, weight=w, socket=name)
           for i, (w, name) in enumerate(zip(weights, "abcd", strict=False))]
    picks = spread([*ups, Upstream("app-9", "127.0.0.1", 1, down=True, socket="z")], 60)
    assert Counter(picks) == expected
    if len(weights) > 1 and len(set(weights)) == 1:
        # nginx visits slots in turn: neighbours belong to different servers
        assert all(x != y for x, y in itertools.pairwise(picks))
    # every live server gets a slot, even a light one among many slots
    assert set(spread([Upstream("h", "h", 1, weight=100, socket="h"),
                       Upstream("l", "l", 1, weight=1, socket="l")], 4)) == {"h", "l"}


def test_point_slots_swaps_links_atomically_and_reports_the_sockets_left(
        tmp_path: Path) -> None:
    slots = tmp_path / "s"
    a = Upstream("app-1", "127.0.0.1", 1, socket=str(tmp_path / "a.sock"))
    b = Upstream("app-2", "127.0.0.1", 2, socket=str(tmp_path / "b.sock"))
    assert point_slots(slots, 4, [a, b]) == set()
    assert Counter(slot_targets(slots, 4)) == {a.socket: 2, b.socket: 2}
    left = point_slots(slots, 4, [a, Upstream("app-2", "127.0.0.1", 2, down=True,
                                              socket=b.socket)])
    assert left == {b.socket}
    assert slot_targets(slots, 4) == [a.socket] * 4
    assert not [f for f in os.listdir(slots) if f.startswith(".")]  # no temporary link left
    # No live server: the slots refuse (a socket nobody listens on), nginx answers 502.
    point_slots(slots, 4, [])
    with socket.socket(socket.AF_UNIX) as conn, pytest.raises(ConnectionRefusedError):
        conn.connect(str(slot_path(slots, 1)))
    with pytest.raises(ValueError, match="app-3 listen"):
        point_slots(slots, 4, [Upstream("app-3", "127.0.0.1", 3)])


def test_unix_connections_counts_accepted_and_queued_not_the_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        assert unix_connections(path) == 0
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)  # queued, not accepted yet
        assert unix_connections(path) == 1
        server, _ = listener.accept()
        assert unix_connections(path) == 1
        server.close()
        client.close()
        assert unix_connections(path) == 0
