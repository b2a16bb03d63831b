"""The import layers hold, and the import-linter contracts catch a break of them.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and run in ``make test``;
these tests show that they would fail if a runtime module imported the tooling, that they
classify every module of the package, and that importing the runtime really loads no
``djscale.cluster`` module.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import djscale

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _copy_of_the_package(tmp_path: Path) -> Path:
    """A copy of src/djscale and pyproject.toml under ``tmp_path``; returns its src folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "djscale", src / "djscale",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return src


def test_the_contracts_hold_on_this_tree() -> None:
    result = _lint_imports(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_runtime_module_that_imports_the_cluster_breaks_the_contract(tmp_path: Path) -> None:
    src = _copy_of_the_package(tmp_path)
    settings = src / "djscale" / "settings.py"
    settings.write_text(settings.read_text(encoding="utf-8")
                        + "\n\nfrom djscale.cluster import state as _state  # injected\n",
                        encoding="utf-8")

    result = _lint_imports(tmp_path, src)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "The runtime never imports the tooling" in result.stdout
    assert "BROKEN" in result.stdout
    assert "djscale.settings -> djscale.cluster.state" in result.stdout


def test_an_indirect_import_of_the_tooling_breaks_it_too(tmp_path: Path) -> None:
    src = _copy_of_the_package(tmp_path)
    (src / "djscale" / "cache" / "helper.py").write_text(
        '"""Injected: the runtime reaching the tooling through a helper."""\n\n'
        "from djscale.testing import write_topology  # noqa: F401\n", encoding="utf-8")
    l1 = src / "djscale" / "cache" / "l1.py"
    l1.write_text(l1.read_text(encoding="utf-8") + "\n\nfrom djscale.cache import helper\n",
                  encoding="utf-8")

    result = _lint_imports(tmp_path, src)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "djscale.cache.helper -> djscale.testing" in result.stdout


def test_a_runtime_module_that_imports_gunicorn_breaks_the_dependency_contract(
        tmp_path: Path) -> None:
    src = _copy_of_the_package(tmp_path)
    metrics = src / "djscale" / "metrics.py"
    metrics.write_text(metrics.read_text(encoding="utf-8") + "\n\nimport gunicorn  # injected\n",
                       encoding="utf-8")

    result = _lint_imports(tmp_path, src)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "djscale.metrics -> gunicorn" in result.stdout


def test_every_module_of_the_package_is_either_runtime_or_tooling() -> None:
    contract = _contracts()["runtime-not-tooling"]
    runtime = set(contract["source_modules"])
    tooling = set(contract["forbidden_modules"])
    children = {f"djscale.{m.name}" for m in pkgutil.iter_modules(djscale.__path__)}

    assert not runtime & tooling
    assert children - runtime - tooling == set(), "classify new modules in pyproject.toml"
    assert (runtime | tooling) - children == set(), "a contract names a module that is gone"
    assert set(_contracts()["runtime-core-dependencies"]["source_modules"]) == runtime


def _loaded_modules(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_importing_the_runtime_loads_no_cluster_module() -> None:
    loaded = _loaded_modules(
        "import djscale.db, djscale.cache, djscale.http, djscale.settings, djscale.conf, "
        "djscale.services, djscale.metrics, djscale.sessions, sys\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith("
        "('djscale.cluster', 'djscale.chaos', 'djscale.testing', 'djscale.deploy', "
        "'gunicorn', 'uvicorn', 'yaml', 'aiohttp'))))")
    assert loaded == []


def test_a_configured_django_app_with_djscale_loads_no_tooling() -> None:
    # Not PyYAML here: kombu (Celery, when installed) imports it for its own serializer.
    loaded = _loaded_modules(
        "import django, sys\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes', 'djscale'],\n"
        "    DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}})\n"
        "django.setup()\n"
        "from django.core import checks\n"
        "checks.run_checks()\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith("
        "('djscale.cluster', 'djscale.chaos', 'djscale.testing', 'djscale.deploy', "
        "'gunicorn', 'uvicorn'))))")
    assert loaded == []
