from django.urls import include, path

from demo import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("whoami", views.whoami),
    path("visit", views.visit),
    path("visits", views.visits),
    path("notes", views.notes),
    path("catalog", views.catalog),
    path("me", views.me),
    path("welcome", views.welcome),
    path("wait", views.wait),
]
