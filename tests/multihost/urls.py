"""URLs of the multi-host test project."""

from django.urls import include, path

from tests.multihost import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("mh/notes", views.create_note),
    path("mh/notes/<int:pk>", views.read_note),
    path("mh/users", views.create_user),
    path("mh/cache/<str:key>", views.cache_value),
    path("mh/accounts", views.create_account),
    path("mh/accounts/<int:pk>", views.account),
    path("mh/accounts/<int:pk>/close", views.close_account),
]
