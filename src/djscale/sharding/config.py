"""The sharding settings of this process, as the sharding layer looks them up.

A thin view over :mod:`djscale.conf`, which reads ``DJSCALE["SHARDING"]`` (written by
:func:`djscale.settings.from_topology` from the topology's ``[[shards]]`` and
``[sharding]`` tables), declares its defaults, validates it and rebuilds it when
settings change. The keys are listed in docs/settings-reference.md.
"""

from __future__ import annotations

from djscale import conf
from djscale.conf import ShardingSettings as ShardingConfig

__all__ = ["ShardingConfig", "get_config"]


def get_config() -> ShardingConfig:
    """The current sharding configuration; ConfigurationError when it is unusable."""
    return conf.get().sharding
