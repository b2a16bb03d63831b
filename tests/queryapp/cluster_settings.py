"""Settings of the app servers booted by the shared-media test: the test settings with
media in the local cluster's shared folder (what a project does for `djscale cluster`)."""

from djscale.storage import local_cluster_storages
from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.queryapp.cluster_urls"
STORAGES = local_cluster_storages()
MEDIA_URL = "/media/"
