"""Replication groups as read from ``settings.DJSCALE`` (typed, validated, cached).

Owns the translation of ``settings.DJSCALE["REPLICATION_GROUPS"]`` (written by
:func:`djscale.settings.from_topology`) into :class:`GroupConfig` objects, and the
alias -> group lookup the router and the failover need on every query. The result is
cached per process and dropped when a test overrides ``DJSCALE`` or ``DATABASES``.

Keys of one group (all but ``PRIMARY`` optional)::

    "default": {
        "PRIMARY": "default",
        "REPLICAS": ["default_replica1", "default_replica2"],
        "MAX_LAG_SECONDS": 5.0,      # replicas further behind are skipped
        "MAX_LAG_BYTES": 16777216,
        "POLICY": "random",          # or "weighted", "least_lag"
        "WEIGHTS": {"default_replica1": 2},   # for "weighted"; 1 when missing
        "FALLBACK": "primary",       # or "raise": NoReplicaAvailable when none is usable
    }

Process-wide keys of ``settings.DJSCALE``: ``REPLICA_REFRESH_SECONDS`` (how often the
pool probes replicas, default 1.0), ``CONSISTENCY_COOKIE_AGE`` (seconds a read-your-writes
token stays valid, default 300).

This module must not open connections.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from djscale.errors import ConfigurationError

__all__ = [
    "FALLBACKS",
    "POLICIES",
    "GroupConfig",
    "cookie_age",
    "group",
    "group_of",
    "groups",
    "refresh_seconds",
    "reset",
]

POLICIES = ("random", "weighted", "least_lag")
FALLBACKS = ("primary", "raise")


@dataclass(frozen=True)
class GroupConfig:
    """One replication group: a primary alias and the aliases of its replicas."""

    name: str
    primary: str
    replicas: tuple[str, ...] = ()
    max_lag_seconds: float = 5.0
    max_lag_bytes: int = 16 * 1024 * 1024
    policy: str = "random"
    fallback: str = "primary"
    weights: Mapping[str, float] = field(default_factory=dict)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The primary followed by the replicas."""
        return (self.primary, *self.replicas)

    def weight(self, alias: str) -> float:
        """Weight of a replica under the ``weighted`` policy (1.0 when not set)."""
        return float(self.weights.get(alias, 1.0))


def _parse_group(name: str, raw: Mapping[str, Any], databases: Mapping[str, Any]) -> GroupConfig:
    where = f'settings.DJSCALE["REPLICATION_GROUPS"]["{name}"]'
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a dict, not {type(raw).__name__}")
    primary = raw.get("PRIMARY", name)
    replicas = tuple(raw.get("REPLICAS", ()))
    for alias in (primary, *replicas):
        if alias not in databases:
            raise ConfigurationError(
                f"{where} names database alias {alias!r}, which is not in settings.DATABASES; "
                "add it to DATABASES or remove it from the group"
            )
    policy = raw.get("POLICY", "random")
    if policy not in POLICIES:
        raise ConfigurationError(
            f'{where}["POLICY"] = {policy!r} is invalid: expected one of {", ".join(POLICIES)}')
    fallback = raw.get("FALLBACK", "primary")
    if fallback not in FALLBACKS:
        raise ConfigurationError(
            f'{where}["FALLBACK"] = {fallback!r} is invalid: expected one of '
            f'{", ".join(FALLBACKS)}')
    weights = raw.get("WEIGHTS", {}) or {}
    if not isinstance(weights, Mapping) or any(
            not isinstance(w, int | float) or w < 0 for w in weights.values()):
        raise ConfigurationError(
            f'{where}["WEIGHTS"] must map replica aliases to numbers >= 0')
    try:
        max_lag_seconds = float(raw.get("MAX_LAG_SECONDS", 5.0))
        max_lag_bytes = int(raw.get("MAX_LAG_BYTES", 16 * 1024 * 1024))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f'{where}["MAX_LAG_SECONDS"] and ["MAX_LAG_BYTES"] must be numbers') from None
    return GroupConfig(name=name, primary=str(primary), replicas=replicas,
                       max_lag_seconds=max_lag_seconds, max_lag_bytes=max_lag_bytes,
                       policy=str(policy), fallback=str(fallback), weights=dict(weights))


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[str, GroupConfig] | None = None
        self.by_alias: dict[str, GroupConfig] = {}


_cache = _Cache()


def _load() -> dict[str, GroupConfig]:
    with _cache.lock:
        if _cache.groups is None:
            raw = getattr(settings, "DJSCALE", {}).get("REPLICATION_GROUPS", {}) or {}
            databases = settings.DATABASES
            parsed = {name: _parse_group(name, g, databases) for name, g in raw.items()}
            by_alias: dict[str, GroupConfig] = {}
            for g in parsed.values():
                for alias in g.aliases:
                    by_alias.setdefault(alias, g)
            _cache.by_alias = by_alias
            _cache.groups = parsed
        return _cache.groups


def groups() -> dict[str, GroupConfig]:
    """Every replication group, by name."""
    found = _cache.groups
    return found if found is not None else _load()


def group(name: str) -> GroupConfig:
    """The group called ``name``; ConfigurationError when there is none."""
    try:
        return groups()[name]
    except KeyError:
        raise ConfigurationError(
            f"no replication group {name!r} in settings.DJSCALE['REPLICATION_GROUPS'] "
            f"(known: {', '.join(sorted(groups())) or 'none'})"
        ) from None


def group_of(alias: str | None) -> GroupConfig | None:
    """The group a database alias (primary or replica) belongs to, or None."""
    if _cache.groups is None:
        _load()
    return _cache.by_alias.get(alias) if alias is not None else None


def _djscale_setting(name: str, default: float) -> float:
    value = getattr(settings, "DJSCALE", {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"settings.DJSCALE[{name!r}] = {value!r} is invalid: "
                                 "expected a number of seconds > 0")
    return float(value)


def refresh_seconds() -> float:
    """How often the replica pool probes each replica."""
    return _djscale_setting("REPLICA_REFRESH_SECONDS", 1.0)


def cookie_age() -> int:
    """How long a read-your-writes token is honoured, in seconds."""
    return int(_djscale_setting("CONSISTENCY_COOKIE_AGE", 300))


def reset() -> None:
    """Forget the cached groups (they are read again on next use)."""
    with _cache.lock:
        _cache.groups = None
        _cache.by_alias = {}


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("DJSCALE", "DATABASES"):
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="djscale.db.config")
