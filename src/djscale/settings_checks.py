"""System check of what :func:`djscale.settings.from_topology` replaced (``djscale.W200``).

- **W200**: a setting the user had written (a ``DATABASES`` or ``CACHES`` alias the
  topology defines, ``CELERY_BROKER_URL``) was replaced by the topology's value. The
  settings module gave its namespace (``from_topology(globals())``), so djscale knows
  what was there; ``DJSCALE_OVERRIDDEN`` lists each replacement.

Settings djscale does not own (other aliases, ``DATABASE_ROUTERS`` the user added,
``SESSION_ENGINE``, ``CELERY_RESULT_BACKEND``, ...) are kept and never reported.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

__all__ = ["check_overridden_settings"]


@register(Tags.compatibility, "djscale")
def check_overridden_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """One warning per user setting that ``from_topology()`` replaced."""
    found: list[CheckMessage] = []
    for item in getattr(settings, "DJSCALE_OVERRIDDEN", None) or []:
        found.append(Warning(
            f"{item['setting']} from settings.py ({item['was']}) is replaced by the "
            f"topology's ({item['now']}).",
            hint="The topology file describes this setting: remove it from settings.py or "
                 "change the topology; silence djscale.W200 to keep the topology's value "
                 "knowingly.",
            obj=item["setting"],
            id="djscale.W200",
        ))
    return found
