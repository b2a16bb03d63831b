"""Replication groups of this process, as the replica layer looks them up.

A thin view over :mod:`djscale.conf` (which reads, defaults, validates and caches every
djscale setting): the group of a name or of a database alias, the probe interval and the
read-your-writes token age. The keys of ``DJSCALE["REPLICATION_GROUPS"]`` are listed in
docs/settings-reference.md.

This module must not open connections.
"""

from __future__ import annotations

from djscale import conf
from djscale.conf import FALLBACKS, POLICIES
from djscale.conf import ReplicationGroup as GroupConfig
from djscale.errors import ConfigurationError

__all__ = [
    "FALLBACKS",
    "POLICIES",
    "GroupConfig",
    "cookie_age",
    "group",
    "group_of",
    "groups",
    "primary_for_unsafe_methods",
    "refresh_seconds",
    "reset",
]


def groups() -> dict[str, GroupConfig]:
    """Every replication group, by name."""
    return dict(conf.get().replication.groups)


def group(name: str) -> GroupConfig:
    """The group called ``name``; ConfigurationError when there is none."""
    found = conf.get().replication.groups
    try:
        return found[name]
    except KeyError:
        raise ConfigurationError(
            f"no replication group {name!r} in DJSCALE['REPLICATION_GROUPS'] "
            f"(known: {', '.join(sorted(found)) or 'none'})"
        ) from None


def group_of(alias: str | None) -> GroupConfig | None:
    """The group a database alias (primary or replica) belongs to, or None."""
    return conf.get().replication.group_of(alias)


def refresh_seconds() -> float:
    """How often the replica pool probes each replica."""
    return conf.get().replication.refresh_seconds


def primary_for_unsafe_methods() -> bool:
    """Whether a POST, PUT, PATCH or DELETE request reads from the primary."""
    return conf.get().replication.primary_for_unsafe_methods


def cookie_age() -> int:
    """How long a read-your-writes token is honoured, in seconds."""
    return conf.get().replication.consistency_cookie_age


def reset() -> None:
    """Forget the cached configuration (it is read again on next use)."""
    conf.reset()
