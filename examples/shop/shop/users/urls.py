from django.urls import include, path

from shop.users import views

# Unknown paths and malformed ids answer JSON like every other error.
handler404 = "shop.api.not_found"

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/users/", views.users),
    path("api/users/<int:user_id>", views.user),
    path("api/users/openapi.json", views.schema),
]
