"""``manage.py warm_cache``: implemented in :mod:`djscale.cache.warm_command`."""

from djscale.cache.warm_command import Command

__all__ = ["Command"]
