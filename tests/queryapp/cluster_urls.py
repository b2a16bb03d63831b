"""URLs of the shared-media test's app servers: the test URLs plus media serving."""

from django.urls import include, path

from tests.urls import urlpatterns as test_urlpatterns

urlpatterns = [
    *test_urlpatterns,
    path("", include("djscale.storage.urls")),
]
