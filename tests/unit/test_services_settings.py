"""Services of the topology reach Django settings and the clients built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.services import ServiceClient, breakers
from djscale.services.client import _spec_from_settings
from djscale.settings import from_topology
from djscale.topology import parse

TOPOLOGY = {
    "postgres": {"port": 5432}, "redis": {"port": 6379},
    "services": {"users": {"urls": ["http://10.0.0.1:8101", "http://10.0.0.2:8101"],
                           "timeout": 1.5, "retries": 1, "breaker_minimum_calls": 7}},
}


def test_services_are_exposed_under_djscale_services(tmp_path: Path) -> None:
    settings = from_topology(parse(TOPOLOGY), state_dir=tmp_path)
    users = settings["DJSCALE_DERIVED"]["SERVICES"]["users"]
    assert users["URLS"] == ["http://10.0.0.1:8101", "http://10.0.0.2:8101"]
    assert (users["TIMEOUT"], users["CONNECT_TIMEOUT"], users["RETRIES"]) == (1.5, 1.0, 1)
    assert users["BREAKER"] == {"FAILURE_RATE": 0.5, "MINIMUM_CALLS": 7, "WINDOW": 10.0,
                                "RESET": 5.0}


def test_a_client_from_settings_matches_one_from_the_topology(tmp_path: Path) -> None:
    from django.test import override_settings

    topo = parse(TOPOLOGY)
    derived = from_topology(topo, state_dir=tmp_path)["DJSCALE_DERIVED"]
    with override_settings(DJSCALE_DERIVED=derived, DJSCALE={}):
        assert _spec_from_settings("users") == topo.service("users")
    breakers.clear()
    client = ServiceClient.from_spec(topo.service("users"))
    assert client.transport.timeout == 1.5
    assert client.transport.retry.retries == 1
    assert client.breaker is breakers.get("users")
    assert client.breaker.minimum_calls == 7
    client.close()


def test_gateway_factory_reads_the_topology_named_by_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from djscale.services.gateway import create_app

    path = tmp_path / "djscale.toml"
    path.write_text(
        '[services.users]\nurls = ["http://127.0.0.1:8101"]\n'
        '[gateway]\nrate_limit = 5\n'
        '[[gateway.routes]]\nprefix = "/api/users/"\nservice = "users"\ntimeout = 0.5\n')
    monkeypatch.setenv("DJSCALE_TOPOLOGY", str(path))
    monkeypatch.setenv("DJSCALE_GATEWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    app = create_app()
    assert [(r.prefix, r.service, r.timeout) for r in app.routes] == [
        ("/api/users/", "users", 0.5)]
    assert app.limiter is not None and app.limiter.limit == 5
