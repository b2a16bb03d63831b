"""System checks of the settings :func:`djscale.settings.from_topology` made (W200, E200).

- **W200**: a setting the user had written (a ``DATABASES`` or ``CACHES`` alias the
  topology defines, ``CELERY_BROKER_URL``) was replaced by the topology's value. The
  settings module gave its namespace (``from_topology(globals())``), so djscale knows
  what was there; ``DJSCALE_OVERRIDDEN`` lists each replacement.

- **E200** (database checks: ``manage.py check --database default``, ``migrate``): a
  database cannot be reached or refuses the credentials. One line says which alias,
  where, as whom and why (``password authentication failed for user "shop"``), instead of
  a traceback from the first query.

Settings djscale does not own (other aliases, ``DATABASE_ROUTERS`` the user added,
``SESSION_ENGINE``, ``CELERY_RESULT_BACKEND``, ...) are kept and never reported.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections

__all__ = ["check_database_connections", "check_overridden_settings"]


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


@register(Tags.database, "djscale")
def check_database_connections(app_configs: Any = None, databases: Any = None,
                               **kwargs: Any) -> list[CheckMessage]:
    """One error per database of ``databases`` that cannot be connected to."""
    found: list[CheckMessage] = []
    for alias in databases or ():
        if alias not in settings.DATABASES:
            continue
        conn = connections[alias]
        entry = settings.DATABASES[alias]
        try:
            conn.ensure_connection()
        except Exception as exc:  # noqa: BLE001  (DatabaseError, or a pool timeout)
            where = f"{entry.get('HOST') or 'local socket'}:{entry.get('PORT') or 'default'}"
            reason = " ".join(str(exc).split()) or type(exc).__name__
            found.append(Error(
                f"cannot connect to database {alias!r} at {where} as user "
                f"{entry.get('USER') or '(default)'}: {reason}",
                hint="Check the address and the credentials: the password comes from the "
                     "topology's password_env or password_file (else $DJSCALE_DB_PASSWORD); "
                     "sslmode and options from its [postgres] table.",
                obj=alias,
                id="djscale.E200",
            ))
        finally:
            conn.close()
    return found
