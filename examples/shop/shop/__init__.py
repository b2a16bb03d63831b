"""The example shop: users, products and orders services built only on djscale's public API.

Each service is the same code base run with its own settings module
(``shop.settings.users`` / ``.products`` / ``.orders``) and its own topology file
(``examples/shop/<service>.toml``), hence its own databases.
"""

from shop.celery import app as celery_app

__all__ = ["celery_app"]
