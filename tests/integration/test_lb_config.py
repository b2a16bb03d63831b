"""Load-balancer configs from the topology, validated by the real nginx -t / haproxy -c."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from djscale.cluster.lb import Upstream, haproxy_config, nginx_config, validate
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
