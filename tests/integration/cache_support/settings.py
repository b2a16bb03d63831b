"""The tests project's settings with the cache views' URLs (app servers of the cache bench).

The middleware is Django's usual stack rather than the test project's full list, so the
benchmark measures the cache and the database, not middleware other components are still
developing.
"""

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.integration.cache_support.urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
