"""The tests project's settings with the cache views' URLs (for app servers in benchmarks)."""

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.integration.cache_support.urls"
