"""A feature whose package comes with an extra says which extra, instead of a bare ImportError.

Each case runs in a fresh interpreter in which the extra's package is made unimportable
(``sys.modules[name] = None``), the way a core ``pip install djscale`` lacks it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from djscale.errors import ConfigurationError, MissingDependency

ROOT = Path(__file__).resolve().parents[2]


def _without(packages: list[str], code: str) -> subprocess.CompletedProcess[str]:
    block = "".join(f"sys.modules[{p!r}] = None\n" for p in packages)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-c", f"import sys\n{block}{code}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_missing_dependency_is_a_configuration_error_and_an_import_error() -> None:
    error = MissingDependency("PyYAML", extra="kubernetes", feature="djscale deploy kubernetes")

    assert isinstance(error, ConfigurationError)
    assert isinstance(error, ImportError)
    assert str(error) == ("djscale deploy kubernetes needs PyYAML, which is not installed: "
                          "pip install 'djscale[kubernetes]'")


@pytest.mark.parametrize(("blocked", "module", "extra"), [
    (["yaml"], "djscale.deploy.kubernetes", "kubernetes"),
    (["aiohttp", "yarl"], "djscale.services.aiohttp_transport", "gateway"),
    (["celery"], "djscale.events.tasks", "events"),
])
def test_importing_a_feature_without_its_package_names_the_extra(
        blocked: list[str], module: str, extra: str) -> None:
    result = _without(blocked, (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['djscale', 'djscale.events'])\n"
        "from djscale.errors import MissingDependency\n"
        "try:\n"
        f"    import {module}\n"
        "except MissingDependency as exc:\n"
        "    print(exc)\n"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"pip install 'djscale[{extra}]'")


def test_the_service_client_works_without_aiohttp_until_the_async_default_wire_is_needed(
        ) -> None:
    result = _without(["aiohttp", "yarl"], (
        "import httpx\n"
        "from djscale.errors import MissingDependency\n"
        "from djscale.services import ServiceClient, AsyncResilientTransport, ResilientTransport\n"
        "ResilientTransport(service='users').close()\n"
        "AsyncResilientTransport(service='users', transport=httpx.AsyncHTTPTransport())\n"
        "try:\n"
        "    AsyncResilientTransport(service='users')\n"
        "except MissingDependency as exc:\n"
        "    print(exc)\n"
        "print('aiohttp loaded:', sys.modules.get('aiohttp') is not None)\n"))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("pip install 'djscale[gateway]'")
    assert lines[1] == "aiohttp loaded: False"


def test_the_cli_says_which_extra_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    topology = tmp_path / "djscale.toml"
    topology.write_text('[project]\nname = "site"\nsettings = "site.settings"\n'
                        'wsgi = "site.wsgi:application"\n', encoding="utf-8")
    result = _without(["yaml"], (
        "from djscale.cli import main\n"
        f"sys.exit(main(['deploy', 'kubernetes', '--topology', {str(topology)!r}, "
        f"'--out', {str(tmp_path / 'out')!r}]))\n"))

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "djscale: error: djscale deploy kubernetes needs PyYAML, which is not installed: "
        "pip install 'djscale[kubernetes]'"]


def test_cluster_up_without_gunicorn_names_the_cluster_extra_before_starting_anything(
        tmp_path: Path) -> None:
    topology = tmp_path / "djscale.toml"
    topology.write_text('[project]\nname = "site"\nsettings = "site.settings"\n'
                        'wsgi = "site.wsgi:application"\n\n[app]\nservers = 1\n',
                        encoding="utf-8")
    state = tmp_path / "state"
    result = _without(["gunicorn"], (
        "from djscale.cli import main\n"
        f"sys.exit(main(['cluster', 'up', '--topology', {str(topology)!r}, "
        f"'--state-dir', {str(state)!r}]))\n"))

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "djscale: error: the local cluster (app servers) needs gunicorn, which is not "
        "installed: pip install 'djscale[cluster]'"]
    assert not state.exists()
