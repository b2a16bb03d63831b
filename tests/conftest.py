"""Choose the settings module of the run: unit tests need no server, the rest a cluster.

A run that collects only ``tests/unit`` uses ``tests.unit.settings`` (nothing is booted,
no PostgreSQL or Redis binary needs to exist); any other run uses ``tests.settings``,
which boots the shared test cluster. ``--ds`` or ``DJANGO_SETTINGS_MODULE`` still win.
pytest-django reads the settings module before conftest files load, so the choice is
made here, ahead of its own ``pytest_configure`` (which sets Django up).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent / "unit"


def _only_unit(config: pytest.Config) -> bool:
    invocation = config.invocation_params.dir
    paths = [(invocation / arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(path == UNIT or UNIT in path.parents for path in paths)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Point Django at the unit or the integration settings before pytest-django sets it up."""
    if "DJANGO_SETTINGS_MODULE" in os.environ:
        return
    os.environ["DJANGO_SETTINGS_MODULE"] = (
        "tests.unit.settings" if _only_unit(config) else "tests.settings")
    from django.conf import settings

    settings.DATABASES  # noqa: B018 - load the settings now (pytest-django sets Django up next)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which settings module the run uses (and so whether it boots a cluster)."""
    return f"django settings: {os.environ.get('DJANGO_SETTINGS_MODULE')}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """Print pytest-randomly's seed at the end, also under ``-q`` (which hides the header).

    The suite runs in random order; a failure that depends on the order is replayed with
    ``pytest --randomly-seed=<seed>``.
    """
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"random order: --randomly-seed={seed}")
