"""Settings for the django-stubs mypy plugin: every app of the repository, no server.

``make typecheck`` runs mypy over src, tests, benchmarks and each example project; the
plugin reads one settings module to learn the models, so this one installs the test
apps (``tests.unit.settings``) and the example projects' apps together. Only the type
checker uses it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.unit.settings import *  # noqa: F403
from tests.unit.settings import INSTALLED_APPS as _TEST_APPS

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
for _project in ("demo", "shop"):
    if str(_EXAMPLES / _project) not in sys.path:
        sys.path.append(str(_EXAMPLES / _project))

INSTALLED_APPS = [*_TEST_APPS, "demo", "shop.users", "shop.products", "shop.orders"]
