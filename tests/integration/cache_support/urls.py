"""URLs of the cache tests and benchmark (the tests project's URLs plus cache views)."""

from django.urls import path

from tests.integration.cache_support import views
from tests.urls import urlpatterns as base

urlpatterns = [
    path("cache/square/<int:n>/", views.square_view),
    path("cache/page/", views.page_view),
    path("cache/notes/<str:author>/", views.notes_cached),
    path("cache/notes-uncached/<str:author>/", views.notes_uncached),
    *base,
]
