from django.urls import include, path

from shop.orders import views

# Unknown paths and malformed ids answer JSON like every other error.
handler404 = "shop.api.not_found"

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/orders/", views.orders),
    path("api/orders/openapi.json", views.schema),
]
