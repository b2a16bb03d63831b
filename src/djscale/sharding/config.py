"""The sharding settings of this process, read from ``settings.DJSCALE["SHARDING"]``.

:func:`djscale.settings.from_topology` writes that dict from the topology's ``[[shards]]``
and ``[sharding]`` tables; this module only reads it (no defaults of its own beyond
"no shards"), and caches the result until settings change (tests override settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from djscale.errors import ConfigurationError
from djscale.topology import ShardingSpec

__all__ = ["ShardingConfig", "get_config"]


@dataclass(frozen=True)
class ShardingConfig:
    """Physical shard aliases, the number of logical shards, the id epoch and the mode."""

    aliases: tuple[str, ...]
    logical_shards: int
    epoch_ms: int
    mode: str
    map_alias: str
    map_ttl_seconds: float
    replicas: dict[str, tuple[str, ...]]

    def is_shard(self, alias: str) -> bool:
        """True when ``alias`` is a shard primary."""
        return alias in self.aliases


_config: ShardingConfig | None = None
_DEFAULTS = ShardingSpec()


def get_config() -> ShardingConfig:
    """The current sharding configuration; ConfigurationError when it is unusable."""
    global _config
    if _config is None:
        _config = _read()
    return _config


def _read() -> ShardingConfig:
    djscale: dict[str, Any] = getattr(settings, "DJSCALE", {}) or {}
    raw: dict[str, Any] = djscale.get("SHARDING") or {}
    aliases = tuple(raw.get("ALIASES", djscale.get("SHARDS", ())))
    missing = [a for a in aliases if a not in settings.DATABASES]
    if missing:
        raise ConfigurationError(
            f"DJSCALE['SHARDING']['ALIASES'] names {missing[0]!r}, which is not in DATABASES"
        )
    groups: dict[str, Any] = djscale.get("REPLICATION_GROUPS", {})
    return ShardingConfig(
        aliases=aliases,
        logical_shards=int(raw.get("LOGICAL_SHARDS", _DEFAULTS.logical_shards)),
        epoch_ms=int(raw.get("EPOCH_MS", _DEFAULTS.epoch_ms)),
        mode=str(raw.get("MODE", _DEFAULTS.mode)),
        map_alias=str(raw.get("MAP_ALIAS", "default")),
        map_ttl_seconds=float(raw.get("MAP_TTL_SECONDS", 1.0)),
        replicas={a: tuple(groups.get(a, {}).get("REPLICAS", ())) for a in aliases},
    )


def _reset(**kwargs: Any) -> None:
    global _config
    if kwargs.get("setting") in ("DJSCALE", "DATABASES"):
        _config = None


setting_changed.connect(_reset)
