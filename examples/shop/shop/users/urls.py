from django.urls import include, path

from shop.users import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/users/", views.users),
    path("api/users/<int:user_id>", views.user),
    path("api/users/openapi.json", views.schema),
]
