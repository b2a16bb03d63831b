"""What a user gets from ``pip install djscale``: the runtime, none of the tooling's packages.

The wheel of this checkout (``built_wheel``, see conftest.py) goes into a fresh virtualenv
without extras, from the same package index pip uses here; the tests then look at that
environment from outside, as a user's app server would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

TOOLING_PACKAGES = {"gunicorn", "uvicorn", "aiohttp", "uvloop", "httptools", "pyyaml",
                    "tomli-w", "celery", "kombu"}


def _env() -> dict[str, str]:
    """This environment minus what would point Python back at the checkout or its settings."""
    drop = {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def core_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed without extras."""
    venv = tmp_path_factory.mktemp("core-venv") / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      str(built_wheel)], cwd=venv.parent, timeout=600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    # From a folder outside the checkout, so only the installed package can be imported.
    return _run([str(venv / "bin" / "python"), "-c", code], cwd=venv.parent)


def test_a_core_install_carries_none_of_the_tooling_packages(core_venv: Path) -> None:
    listed = _run([str(core_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                  cwd=core_venv.parent)
    assert listed.returncode == 0, listed.stderr
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}

    assert names & TOOLING_PACKAGES == set()
    assert {"djscale", "django", "psycopg", "redis", "httpx", "prometheus-client"} <= names


def test_the_runtime_imports_in_a_core_install_and_loads_no_cluster_module(
        core_venv: Path) -> None:
    result = _python(core_venv,
                     "import djscale.db, djscale.cache, djscale.http, djscale.settings, sys; "
                     "print([m for m in sys.modules if m.startswith('djscale.cluster')]); "
                     "print(djscale.__file__)")

    assert result.returncode == 0, result.stderr
    loaded, location = result.stdout.splitlines()
    assert loaded == "[]"
    assert location.startswith(str(core_venv)), "imported the checkout, not the wheel"


def test_a_django_project_with_djscale_passes_its_checks_in_a_core_install(
        core_venv: Path) -> None:
    result = _python(core_venv, (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes', 'djscale'],\n"
        "    DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}})\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('check')\n"
        "import djscale.services\n"
        "djscale.services.ServiceClient\n"))

    # Warnings (e.g. about pooling on SQLite) are fine; an error would exit non-zero.
    assert result.returncode == 0, result.stderr
    assert "System check identified" in result.stdout + result.stderr


def test_djscale_version_prints_the_version(core_venv: Path) -> None:
    result = _run([str(core_venv / "bin" / "djscale"), "--version"], cwd=core_venv.parent)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"djscale {version('djscale')}"


def test_a_feature_of_an_extra_names_the_extra_in_one_line(core_venv: Path,
                                                          tmp_path: Path) -> None:
    topology = tmp_path / "djscale.toml"
    topology.write_text('[project]\nname = "site"\nsettings = "site.settings"\n'
                        'wsgi = "site.wsgi:application"\n', encoding="utf-8")

    result = _run([str(core_venv / "bin" / "djscale"), "deploy", "kubernetes", "--topology",
                   str(topology), "--out", str(tmp_path / "out")], cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "djscale: error: djscale deploy kubernetes needs PyYAML, which is not installed: "
        "pip install 'djscale[kubernetes]'"]


def test_the_events_app_without_celery_names_the_events_extra(core_venv: Path) -> None:
    result = _python(core_venv, (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['djscale', 'djscale.events'])\n"
        "try:\n"
        "    django.setup()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"))

    assert result.returncode == 0, result.stderr
    assert "pip install 'djscale[events]'" in result.stdout


def test_the_sdist_carries_license_changelog_docs_and_tests(built_wheel: Path) -> None:
    (sdist,) = built_wheel.parent.glob("djscale-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}

    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "MANIFEST.in"} <= names
    assert "docs/topology.md" in names
    assert "tests/unit/test_import_layers.py" in names
    assert "tests/integration/test_packaging.py" in names


def test_the_wheel_declares_its_license_and_extras(built_wheel: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = wheel.read(metadata_name).decode()
        licenses = [n for n in wheel.namelist() if ".dist-info/licenses/" in n]

    assert "License-Expression: BSD-3-Clause" in metadata
    assert any(n.endswith("/LICENSE") for n in licenses)
    core = [line for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in core
                if any(p in line.lower() for p in ("gunicorn", "uvicorn", "aiohttp", "yaml"))]
    for extra in ("cluster", "gateway", "kubernetes", "events", "s3", "all", "dev"):
        assert f"Provides-Extra: {extra}" in metadata


def test_the_pytest_plugin_and_the_cluster_tooling_import_in_a_core_install(
        core_venv: Path) -> None:
    # djscale.testing.plugin is a pytest11 entry point: any pytest run in a project with
    # djscale installed loads it, so its imports must not need an extra.
    result = _python(core_venv, "import djscale.testing, djscale.cluster, djscale.cli")

    assert result.returncode == 0, result.stderr
