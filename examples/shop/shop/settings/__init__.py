"""One settings module per service; shared parts in :mod:`shop.settings.base`."""
