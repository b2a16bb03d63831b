"""System check of the query policy (id ``djscale.E110``): bad ``DJSCALE["QUERIES"]``
settings are reported at start-up instead of failing every request."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register

from djscale.errors import ConfigurationError
from djscale.queries.config import query_config

__all__ = ["check_query_settings"]


@register("djscale")
def check_query_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate ``DJSCALE["QUERIES"]``."""
    try:
        query_config()
    except ConfigurationError as exc:
        return [Error(str(exc), hint="See docs/queries.md for the allowed values.",
                      id="djscale.E110")]
    return []
