"""The query policy of this process (``DJSCALE["QUERIES"]``), as the query tools read it.

A thin view over :mod:`djscale.conf`, which declares the keys and their defaults (``N_PLUS_ONE``
and ``BUDGET`` raise under ``DEBUG`` and log otherwise), validates them (system check
``djscale.E110``) and rebuilds them when settings change; docs/settings-reference.md lists
them.
"""

from __future__ import annotations

from djscale import conf
from djscale.conf import MODES, Mode
from djscale.conf import QueriesSettings as QueryConfig

__all__ = ["MODES", "Mode", "QueryConfig", "query_config"]


def query_config() -> QueryConfig:
    """The current query policy; ConfigurationError when a setting is unusable."""
    return conf.get().queries
